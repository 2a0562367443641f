"""Account-wide reads, made once within a short freshness window and shared by every job.

The withdrawal's balance read (`get_balances`) asks for the account's balances: the same
request and the same answer whichever job sends it. Within `freshness` seconds of an
answer, the same read by any job in any worker process is answered from it (kept in
Redis); within one process, identical reads made at once wait for the one in flight
instead of sending their own. A payout run of hundreds of withdrawals then reads the
balances about once a second, not once per withdrawal.

This is safe for the balance read because that check is advisory: the exchange itself
refuses a withdrawal the balance cannot cover (`INSUFFICIENT_FUNDS`), and a read a second
old says no less than one made just before a hundred other withdrawals land. Which reads
may be shared is the workflow's rule (`Rules.account_reads`); a read of one job's own
things (its withdrawal) never is. Balances are not secrets; no request header is kept.

Keys (this module is their only owner):

| key                    | type      | holds                                                        |
|------------------------|-----------|--------------------------------------------------------------|
| `bpxw:read:<sha256>`   | string PX | one read's answer (status, body, headers, url), JSON, kept   |
|                        |           | `freshness` s; the hash covers the account's public key, the |
|                        |           | method, the path and the query                               |
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Collection
from typing import Any, Protocol

import redis
import structlog

from bpx_worker.arazzo import HttpRequest
from bpx_worker.exchange.client import Response
from bpx_worker.exchange.signer import rendered

log = structlog.get_logger(__name__)

PREFIX = "bpxw:read:"


class _Exchange(Protocol):
    def send(self, request: HttpRequest, *, background: bool = False) -> Response: ...

    def reserve_slot(self) -> None: ...


class SharedReads:
    """An exchange client that answers the shareable reads from a recent identical one (module docstring)."""

    def __init__(self, client: _Exchange, store: redis.Redis, shared: Collection[tuple[str, str]],
                 freshness: float, account: str):
        if freshness <= 0:
            raise ValueError("freshness must be positive")
        self.client = client
        self.redis = store
        self.shared = frozenset((method.upper(), path) for method, path in shared)
        self.freshness_ms = int(freshness * 1000)
        self.account = account
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def reserve_slot(self) -> None:
        self.client.reserve_slot()

    def send(self, request: HttpRequest, *, background: bool = False) -> Response:
        if (request.method.upper(), request.path) not in self.shared or request.body is not None:
            return self.client.send(request, background=background)
        key = self._key(request)
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._lock(key):  # the first of several identical reads sends; the others take its answer
            cached = self._cached(key)
            if cached is not None:
                return cached
            response = self.client.send(request, background=background)
            self._keep(key, response)
            return response

    def _key(self, request: HttpRequest) -> str:
        query = sorted(rendered(request.query).items())
        identity = json.dumps([self.account, request.method.upper(), request.path, query])
        return PREFIX + hashlib.sha256(identity.encode()).hexdigest()

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def _cached(self, key: str) -> Response | None:
        try:
            raw = self.redis.get(key)
        except redis.RedisError as exc:  # the cache is an optimisation: without it, every job reads alone
            log.warning("shared_read_cache_unavailable", error=type(exc).__name__)
            return None
        if raw is None:
            return None
        kept: dict[str, Any] = json.loads(raw)
        return Response(kept["status"], kept["body"], kept["headers"], kept["url"])

    def _keep(self, key: str, response: Response) -> None:
        value = json.dumps({"status": response.status, "body": response.body, "headers": dict(response.headers),
                            "url": response.url})
        try:
            self.redis.set(key, value, px=self.freshness_ms)
        except redis.RedisError as exc:
            log.warning("shared_read_cache_unavailable", error=type(exc).__name__)
