"""A local sandbox of the Backpack Exchange: a real HTTP server, not a test double.

It serves the three endpoints of the balance-checked withdrawal workflow, plus the
withdrawal limit (a read with boolean query values), with the OpenAPI description's
paths, field names and types, and checks the same signed headers the exchange does
(with the PUBLIC key only; it never sees the secret) against the parameters as
received on the wire:

    GET  /api/v1/capital                    balanceQuery
    POST /wapi/v1/capital/withdrawals       withdraw
    GET  /wapi/v1/capital/withdrawals       withdrawalQueryAll
    GET  /api/v1/account/limits/withdrawal  maxWithdrawalQuantity

A withdrawal appears in the history `history_lag` seconds after it is created and
reads "confirmed" `confirm_delay` seconds after it is created (both decided at
read time), unless it was created while `hold_status` was set. Faults (503, 429,
latency, TCP reset before processing, commit-then-reset) are injected per request
with a seedable random.Random, only on the exchange endpoints. Two settings play an
exchange that misbehaves: `ignore_filters` answers the history as if it had no
`id`/`clientId` filters (older API versions), and `redirect_to` answers every
exchange request with a redirect there. Unsigned admin endpoints live under
/_sandbox/. State sits behind one lock and, with `state_file`, is written
atomically after every mutation and reloaded at start.

Every accepted socket has TCP_NODELAY and every response leaves in one write: a
head written apart from its body would wait for the peer's delayed ACK on a
keep-alive connection (Nagle), about 40 ms a request.

Run it with `python -m devtools.sandbox --help`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

from bpx_worker.config.documents import blockchain_names, custody_assets
from bpx_worker.errors import ConfigurationError
from bpx_worker.exchange.signer import (
    DEFAULT_WINDOW_MS,
    MAX_WINDOW_MS,
    check_window,
    signing_string,
    verify,
    verify_key_from_api_key,
)

log = logging.getLogger("devtools.sandbox")

BALANCES_PATH = "/api/v1/capital"
WITHDRAWALS_PATH = "/wapi/v1/capital/withdrawals"
LIMITS_PATH = "/api/v1/account/limits/withdrawal"
# (method, path) -> signing instruction, as in the OpenAPI "**Instruction:**" lines.
EXCHANGE_ROUTES = {
    ("GET", BALANCES_PATH): "balanceQuery",
    ("POST", WITHDRAWALS_PATH): "withdraw",
    ("GET", WITHDRAWALS_PATH): "withdrawalQueryAll",
    ("GET", LIMITS_PATH): "maxWithdrawalQuantity",
}
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
FAULT_KINDS = ("5xx", "429", "drop", "commit_then_drop")
JSON_TYPE = "application/json; charset=utf-8"
STATE_VERSION = 1


# --------------------------------------------------------------------------- configuration


@dataclass
class Faults:
    p_5xx: float = 0
    p_429: float = 0
    latency_ms: int = 0
    p_drop: float = 0
    p_commit_then_drop: float = 0
    hang_ms: int = 0
    seed: int | None = None
    only_withdrawals: bool = False  # inject faults into the withdrawal POST only, not the reads

    def validated(self) -> Faults:
        for name in ("p_5xx", "p_429", "p_drop", "p_commit_then_drop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability from 0 to 1, got {value!r}")
        for name in ("latency_ms", "hang_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.only_withdrawals, bool):
            raise ValueError(f"only_withdrawals must be true or false, got {self.only_withdrawals!r}")
        return self


@dataclass
class SandboxConfig:
    api_key: str
    balances: dict[str, Decimal]
    confirm_delay: float = 2.0
    history_lag: float = 1.0
    hold_status: str | None = None
    reject_code: str | None = None  # refuse every new withdrawal with this ApiErrorCode
    withdraw_status: int = 200  # the HTTP status a new withdrawal is answered with (a 2xx)
    ignore_filters: bool = False  # answer the history as if `id` and `clientId` were not filters
    redirect_to: str | None = None  # answer every exchange request with a redirect to this base URL
    redirect_status: int = 307
    faults: Faults = field(default_factory=Faults)
    state_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0


class BadRequest(Exception):
    """A request the exchange would refuse while parsing it: plain-text 400."""


class ApiError(Exception):
    """A request refused with an ApiErrorResponse JSON body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _dec(value: Any, what: str) -> Decimal:
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{what} is not a decimal: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{what} is not a finite decimal: {value!r}")
    return result


def _fmt(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros: 1.50 -> 1.5, 1E+2 -> 100."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _non_negative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def _redirect_target(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ValueError(f"redirect_to must be an http(s) base URL or null, got {value!r}")
    return value.rstrip("/")


def _redirect_status(value: Any) -> int:
    if isinstance(value, bool) or value not in REDIRECT_STATUSES:
        raise ValueError(f"redirect_status must be one of {REDIRECT_STATUSES}, got {value!r}")
    return int(value)


def _parse_balances(raw: Any) -> dict[str, dict[str, Decimal]]:
    """{"USDC": "1000"} or {"USDC": {"available": .., "locked": .., "staked": ..}}."""
    if not isinstance(raw, dict):
        raise ValueError("balances must be an object of symbol -> amount")
    result = {}
    for symbol, value in raw.items():
        parts = value if isinstance(value, dict) else {"available": value}
        entry = {k: _dec(parts.get(k, "0"), f"{symbol}.{k}") for k in ("available", "locked", "staked")}
        if any(v < 0 for v in entry.values()):
            raise ValueError(f"balance of {symbol} must not be negative")
        result[str(symbol)] = entry
    return result


def _iso_ms(ms: int) -> str:
    """Naive ISO 8601 UTC with milliseconds, as the exchange writes createdAt."""
    stamp = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}"


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- ledger and state


class Ledger:
    """Balances, withdrawals and counters. Every method takes the one lock."""

    def __init__(self, config: SandboxConfig):
        self.lock = threading.Lock()
        self.state_file = Path(config.state_file) if config.state_file else None
        self.confirm_delay = _non_negative(config.confirm_delay, "confirm_delay")
        self.history_lag = _non_negative(config.history_lag, "history_lag")
        self.hold_status = config.hold_status
        self.reject_code = config.reject_code
        self.withdraw_status = config.withdraw_status
        self.ignore_filters = _flag(config.ignore_filters, "ignore_filters")
        self.redirect_to = _redirect_target(config.redirect_to)
        self.redirect_status = _redirect_status(config.redirect_status)
        self.faults = Faults(**asdict(config.faults)).validated()
        self.rng = random.Random(self.faults.seed)
        self.balances = _parse_balances(config.balances)
        self.withdrawals: list[dict[str, Any]] = []
        self.next_id = 1
        self.requests = {f"{m} {p}": 0 for (m, p) in EXCHANGE_ROUTES}
        self.request_log: collections.deque[tuple[float, str]] = collections.deque(maxlen=200_000)
        self.faults_injected = {kind: 0 for kind in FAULT_KINDS}
        if self.state_file and self.state_file.exists():
            self._load(self.state_file)
        self._save()

    # -- persistence (caller holds the lock, or is __init__)
    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.balances = _parse_balances(data["balances"])
        self.withdrawals = data["withdrawals"]
        self.next_id = int(data["next_id"])
        self.requests.update(data.get("requests", {}))
        self.faults_injected.update(data.get("faults_injected", {}))
        log.info("loaded %d withdrawals from %s", len(self.withdrawals), self.state_file)

    def _save(self) -> None:
        if not self.state_file:
            return
        data = {
            "version": STATE_VERSION,
            "balances": self._balances_json(),
            "withdrawals": self.withdrawals,
            "next_id": self.next_id,
            "requests": self.requests,
            "faults_injected": self.faults_injected,
        }
        directory = self.state_file.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.state_file.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- views
    def _balances_json(self) -> dict[str, dict[str, str]]:
        return {s: {k: _fmt(v) for k, v in b.items()} for s, b in sorted(self.balances.items())}

    @staticmethod
    def _status(record: dict[str, Any], now: int) -> str:
        if record["holdStatus"] is not None:
            return record["holdStatus"]
        return "confirmed" if now >= record["confirmAfterMs"] else "pending"

    def _public(self, record: dict[str, Any], now: int, status: str | None = None) -> dict[str, Any]:
        """The Withdrawal object of the OpenAPI, optional fields as explicit null."""
        status = status or self._status(record, now)
        tx = record["txHash"] if status == "confirmed" else None
        return {
            "id": record["id"], "blockchain": record["blockchain"], "clientId": record["clientId"],
            "identifier": tx, "quantity": record["quantity"], "fee": "0", "fiatFee": None,
            "fiatState": None, "fiatSymbol": None, "providerId": None, "symbol": record["symbol"],
            "status": status, "subaccountId": None, "toAddress": record["toAddress"],
            "transactionHash": tx, "createdAt": _iso_ms(record["createdMs"]), "isInternal": False,
            "bankName": None, "bankIdentifier": None, "accountIdentifier": None, "triggerAt": None,
        }

    def config_json(self, api_key: str) -> dict[str, Any]:
        return {
            "api_key": api_key, "confirm_delay": self.confirm_delay, "history_lag": self.history_lag,
            "hold_status": self.hold_status, "reject_code": self.reject_code,
            "withdraw_status": self.withdraw_status, "ignore_filters": self.ignore_filters,
            "redirect_to": self.redirect_to, "redirect_status": self.redirect_status, "faults": asdict(self.faults),
            "state_file": str(self.state_file) if self.state_file else None,
        }

    def snapshot(self, api_key: str) -> dict[str, Any]:
        with self.lock:
            now = _now_ms()
            withdrawals = []
            for record in self.withdrawals:
                item = self._public(record, now)
                item["twoFactorTokenProvided"] = record["twoFactorTokenProvided"]
                item["visibleInHistory"] = now >= record["visibleAfterMs"]
                withdrawals.append(item)
            return {
                "balances": self._balances_json(), "withdrawals": withdrawals,
                "requests": dict(self.requests), "faults_injected": dict(self.faults_injected),
                "config": self.config_json(api_key),
            }

    # -- the exchange
    def count_request(self, route: str) -> None:
        with self.lock:
            self.requests[route] += 1
            # When each exchange request arrived (ms), for measuring the rate the workers keep to. Counters are
            # saved with the next change of the ledger: a count is no reason to rewrite the state file.
            self.request_log.append((time.time() * 1000, route))

    def request_times(self, since_ms: float = 0) -> list[tuple[float, str]]:
        with self.lock:
            return [entry for entry in self.request_log if entry[0] >= since_ms]

    def draw_faults(self, is_withdraw: bool) -> dict[str, Any]:
        """One draw per kind per request, in a fixed order, so a seed replays exactly."""
        with self.lock:
            f = self.faults
            draws = [self.rng.random() for _ in range(4)]
            if f.only_withdrawals and not is_withdraw:
                return {"latency_ms": 0, "hang_ms": 0, "drop": False, "5xx": False, "429": False,
                        "commit_then_drop": False}
            return {
                "latency_ms": f.latency_ms, "hang_ms": f.hang_ms,
                "drop": draws[0] < f.p_drop, "5xx": draws[1] < f.p_5xx, "429": draws[2] < f.p_429,
                "commit_then_drop": is_withdraw and draws[3] < f.p_commit_then_drop,
            }

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults_injected[kind] += 1
            self._save()

    def balances_view(self) -> dict[str, dict[str, str]]:
        with self.lock:
            return self._balances_json()

    def withdraw(self, body: dict[str, Any], quantity: Decimal) -> dict[str, Any]:
        with self.lock:
            if self.reject_code:
                raise ApiError(400, self.reject_code, "Refused by the sandbox's reject_code setting")
            symbol = body["symbol"]
            held = self.balances.get(symbol, {}).get("available", Decimal(0))
            if held < quantity:
                raise ApiError(400, "INSUFFICIENT_FUNDS", "Insufficient funds")
            balance = self.balances.setdefault(
                symbol, {"available": Decimal(0), "locked": Decimal(0), "staked": Decimal(0)})
            balance["available"] = held - quantity
            now = _now_ms()
            wid, self.next_id = self.next_id, self.next_id + 1
            record = {
                "id": wid, "blockchain": body["blockchain"], "clientId": body.get("clientId"),
                "quantity": _fmt(quantity), "symbol": symbol, "toAddress": body["address"],
                "createdMs": now,
                "visibleAfterMs": now + int(self.history_lag * 1000),
                "confirmAfterMs": now + int(self.confirm_delay * 1000),
                "holdStatus": self.hold_status,
                "txHash": hashlib.sha256(f"sandbox-withdrawal-{wid}-{now}".encode()).hexdigest(),
                "twoFactorTokenProvided": body.get("twoFactorToken") is not None,
                "autoBorrow": body.get("autoBorrow"), "autoLendRedeem": body.get("autoLendRedeem"),
            }
            self.withdrawals.append(record)
            self._save()
            log.info("withdrawal %d created: %s %s on %s, clientId=%s", wid, record["quantity"],
                     symbol, record["blockchain"], record["clientId"])
            return self._public(record, now, status=self.hold_status or "pending")

    def max_withdrawal(self, symbol: str) -> Decimal:
        with self.lock:
            return self.balances.get(symbol, {}).get("available", Decimal(0))

    def history(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            now = _now_ms()
            filtered = not self.ignore_filters
            rows = [
                r for r in reversed(self.withdrawals)
                if now >= r["visibleAfterMs"]
                and (not filtered or q["id"] is None or r["id"] == q["id"])
                and (not filtered or q["clientId"] is None or r["clientId"] == q["clientId"])
                and (q["from"] is None or r["createdMs"] >= q["from"])
                and (q["to"] is None or r["createdMs"] <= q["to"])
            ]
            return [self._public(r, now) for r in rows[q["offset"]:q["offset"] + q["limit"]]]

    # -- admin
    def set_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        names = {f.name for f in fields(Faults)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        with self.lock:
            new = Faults(**{**asdict(self.faults), **changes}).validated()
            self.faults = new
            if "seed" in changes:
                self.rng = random.Random(new.seed)
            return asdict(new)

    def set_config(self, changes: dict[str, Any], api_key: str) -> dict[str, Any]:
        unknown = set(changes) - {"confirm_delay", "history_lag", "hold_status", "reject_code", "withdraw_status",
                                  "ignore_filters", "redirect_to", "redirect_status"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        with self.lock:
            hold = changes.get("hold_status", self.hold_status)
            if hold is not None and (not isinstance(hold, str) or not hold):
                raise ValueError("hold_status must be a non-empty string or null")
            confirm = _non_negative(changes.get("confirm_delay", self.confirm_delay), "confirm_delay")
            lag = _non_negative(changes.get("history_lag", self.history_lag), "history_lag")
            reject = changes.get("reject_code", self.reject_code)
            if reject is not None and (not isinstance(reject, str) or not reject.isupper()):
                raise ValueError("reject_code must be an upper-case ApiErrorCode or null")
            answer = changes.get("withdraw_status", self.withdraw_status)
            if isinstance(answer, bool) or not isinstance(answer, int) or not 200 <= answer <= 299:
                raise ValueError("withdraw_status must be a 2xx status code")
            ignore = _flag(changes.get("ignore_filters", self.ignore_filters), "ignore_filters")
            redirect_to = _redirect_target(changes.get("redirect_to", self.redirect_to))
            redirect_status = _redirect_status(changes.get("redirect_status", self.redirect_status))
            self.confirm_delay, self.history_lag, self.hold_status = confirm, lag, hold
            self.reject_code, self.withdraw_status, self.ignore_filters = reject, answer, ignore
            self.redirect_to, self.redirect_status = redirect_to, redirect_status
            return self.config_json(api_key)

    def set_balances(self, raw: Any) -> dict[str, dict[str, str]]:
        balances = _parse_balances(raw)
        with self.lock:
            self.balances = balances
            self._save()
            return self._balances_json()

    def set_withdrawal_hold(self, wid: int, hold: Any) -> dict[str, Any]:
        if hold is not None and (not isinstance(hold, str) or not hold):
            raise ValueError("hold_status must be a non-empty string or null")
        with self.lock:
            for record in self.withdrawals:
                if record["id"] == wid:
                    record["holdStatus"] = hold
                    self._save()
                    return self._public(record, _now_ms())
        raise LookupError(wid)

    def reset(self, raw_balances: Any = None) -> None:
        balances = _parse_balances(raw_balances) if raw_balances is not None else None
        with self.lock:
            if balances is not None:
                self.balances = balances
            self.withdrawals, self.next_id = [], 1
            self.requests = {k: 0 for k in self.requests}
            self.request_log.clear()
            self.faults_injected = {k: 0 for k in FAULT_KINDS}
            self.faults, self.rng = Faults(), random.Random()
            self._save()


# --------------------------------------------------------------------------- request parsing


def _parse_withdrawal_body(body: dict[str, Any]) -> Decimal:
    """Check an AccountWithdrawalPayload as the exchange's deserializer would."""
    def fail(reason: str) -> None:
        raise BadRequest(f"Bad Request parse request payload error: {reason}")

    for name in ("address", "blockchain", "quantity", "symbol"):
        if body.get(name) is None:
            fail(f"missing field `{name}`")
        if not isinstance(body[name], str):
            fail(f"invalid type for `{name}`, expected a string")
    for name in ("clientId", "twoFactorToken"):
        if body.get(name) is not None and not isinstance(body[name], str):
            fail(f"invalid type for `{name}`, expected a string")
    for name in ("autoBorrow", "autoLendRedeem"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            fail(f"invalid type for `{name}`, expected a boolean")
    if body.get("clientId") is not None and len(body["clientId"]) > 255:
        fail("`clientId` is longer than 255 characters")
    if body["blockchain"] not in blockchain_names():
        fail(f"unknown variant `{body['blockchain']}` for `blockchain`")
    if body["symbol"] not in custody_assets():
        fail(f"unknown variant `{body['symbol']}` for `symbol`")
    try:
        quantity = _dec(body["quantity"], "quantity")
    except ValueError:
        fail("invalid decimal for `quantity`")
    if quantity <= 0:
        raise ApiError(400, "INVALID_QUANTITY", "Quantity must be positive")
    return quantity


def _parse_history_query(params: dict[str, str]) -> dict[str, Any]:
    def integer(name: str, default: int | None, minimum: int) -> int | None:
        if name not in params:
            return default
        text = params[name]
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise BadRequest(f"failed to parse parameter `{name}`: expected an integer >= {minimum}, got {text!r}")
        return int(text)

    query: dict[str, Any] = {
        "id": integer("id", None, 0), "clientId": params.get("clientId"),
        "from": integer("from", None, 0), "to": integer("to", None, 0),
        "limit": integer("limit", 100, 0), "offset": integer("offset", 0, 0),
    }
    if query["limit"] > 1000:
        raise ApiError(400, "INVALID_CLIENT_REQUEST", "Limit must be at most 1000")
    return query


def _parse_limits_query(params: dict[str, str]) -> dict[str, Any]:
    """symbol (required), autoBorrow and autoLendRedeem: booleans exactly `true` or `false`."""
    if not params.get("symbol"):
        raise BadRequest("failed to parse parameter `symbol`: missing")
    query: dict[str, Any] = {"symbol": params["symbol"]}
    for name in ("autoBorrow", "autoLendRedeem"):
        if name in params:
            if params[name] not in ("true", "false"):
                raise BadRequest(
                    f"failed to parse parameter `{name}`: expected `true` or `false`, got {params[name]!r}")
            query[name] = params[name] == "true"
    return query


# --------------------------------------------------------------------------- HTTP handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of clients (a batch, the chaos
    # suite) would see connections dropped and retried by TCP, seconds late.
    request_queue_size = 128
    sandbox: Sandbox

    def __init__(self, *args: Any, **kwargs: Any):
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self):  # track live sockets so stop() can close keep-alive connections
        sock, addr = super().get_request()
        # No Nagle: a small write must not wait for the client's delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.open_connections.add(sock)
        return sock, addr

    def shutdown_request(self, request):
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BackpackSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    server: _Server

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # request line and status only
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # Head and body in one write (end_headers would write the head alone).
        buffered: list[bytes] = getattr(self, "_headers_buffer", [])  # absent for an HTTP/0.9 request: no head
        head = b"".join(buffered) + b"\r\n" if buffered else b""
        buffered.clear()
        self.wfile.write(head + body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), JSON_TYPE, headers)

    def _text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _error(self, err: ApiError) -> None:
        self._json(err.status, {"code": err.code, "message": err.message}, err.headers)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise BadRequest("Bad Request parse request payload error: chunked bodies are not supported")
        if length is None:
            return b""
        if not length.isdigit():
            self.close_connection = True
            raise BadRequest("Bad Request invalid Content-Length")
        return self.rfile.read(int(length))

    def _reset_connection(self) -> None:
        """Abort the TCP connection with an RST, and keep the base class off the dead socket."""
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.rfile.close()  # drop the makefile references so close() really closes the fd
            self.wfile.close()
            sock.close()
            self.rfile, self.wfile = io.BytesIO(), io.BytesIO()
            self.close_connection = True

    # -- dispatch
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            body = self._read_body()
            if (method, path) in EXCHANGE_ROUTES:
                self._exchange(method, path, url.query, body)
            elif path.startswith("/_sandbox/"):
                self._admin(method, path, body)
            elif path in (BALANCES_PATH, WITHDRAWALS_PATH, LIMITS_PATH):
                self._text(405, "405 method not allowed")
            else:
                self._text(404, "404 not found")
        except BadRequest as err:
            self._text(400, str(err))
        except ApiError as err:
            self._error(err)
        except Exception:  # a bug in the sandbox: answer like the exchange would, and log it
            log.exception("sandbox error on %s %s", method, path)
            self._error(ApiError(500, "SERVER_ERROR", "Internal server error"))

    # -- the exchange endpoints
    def _exchange(self, method: str, path: str, query: str, raw_body: bytes) -> None:
        sandbox, route = self.server.sandbox, f"{method} {path}"
        ledger = sandbox.ledger
        ledger.count_request(route)
        if ledger.redirect_to:
            target = ledger.redirect_to + path + (f"?{query}" if query else "")
            log.info("redirecting %s to %s", route, ledger.redirect_to)
            return self._send(ledger.redirect_status, b"", JSON_TYPE, {"Location": target})
        fault = ledger.draw_faults(route == f"POST {WITHDRAWALS_PATH}")
        if fault["latency_ms"]:
            time.sleep(fault["latency_ms"] / 1000)
        if fault["drop"]:
            ledger.count_fault("drop")
            log.info("fault: reset before processing %s", route)
            return self._reset_connection()
        if fault["5xx"]:
            ledger.count_fault("5xx")
            raise ApiError(503, "SERVER_ERROR", "Service temporarily unavailable (sandbox fault)")
        if fault["429"]:
            ledger.count_fault("429")
            raise ApiError(429, "TOO_MANY_REQUESTS", "Too many requests (sandbox fault)",
                           {"Retry-After": "1"})

        params = self._request_params(method, query, raw_body)
        instruction = EXCHANGE_ROUTES[(method, path)]
        if instruction == "withdraw":
            quantity = _parse_withdrawal_body(params)
            self._authenticate(instruction, params)
            withdrawal = ledger.withdraw(params, quantity)
            if fault["commit_then_drop"]:
                ledger.count_fault("commit_then_drop")
                log.info("fault: withdrawal %d committed, resetting the connection", withdrawal["id"])
                if fault["hang_ms"]:
                    time.sleep(fault["hang_ms"] / 1000)
                return self._reset_connection()
            return self._json(sandbox.ledger.withdraw_status, withdrawal)
        if instruction == "withdrawalQueryAll":
            history_query = _parse_history_query(params)
            self._authenticate(instruction, params)
            return self._json(200, ledger.history(history_query))
        if instruction == "maxWithdrawalQuantity":
            limits = _parse_limits_query(params)
            self._authenticate(instruction, params)
            return self._json(200, {**limits, "maxWithdrawalQuantity": _fmt(ledger.max_withdrawal(limits["symbol"]))})
        self._authenticate(instruction, params)
        return self._json(200, ledger.balances_view())

    def _request_params(self, method: str, query: str, raw_body: bytes) -> dict[str, Any]:
        if method == "GET":
            try:
                return dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
            except ValueError as err:
                raise BadRequest(f"Bad Request parse request payload error: {err}") from None
        content_type = self.headers.get("Content-Type", "")
        if not content_type.split(";")[0].strip().lower() == "application/json":
            raise BadRequest("Bad Request parse request payload error: "
                             f"the `Content-Type` {content_type!r} is not supported, expected application/json")
        try:
            body = json.loads(raw_body.decode("utf-8"), parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRequest(f"Bad Request parse request payload error: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("Bad Request parse request payload error: expected a JSON object")
        return body

    def _authenticate(self, instruction: str, params: dict[str, Any]) -> None:
        def refuse(message: str) -> NoReturn:
            raise ApiError(400, "INVALID_CLIENT_REQUEST", message)

        sandbox = self.server.sandbox
        api_key = self.headers.get("X-API-KEY")  # email.message headers: case-insensitive
        signature = self.headers.get("X-SIGNATURE")
        timestamp_text = self.headers.get("X-TIMESTAMP")
        window_text = self.headers.get("X-WINDOW")
        if not api_key:
            refuse("Missing X-API-KEY header")
        if not signature:
            refuse("Missing X-SIGNATURE header")
        if not timestamp_text:
            refuse("Missing X-TIMESTAMP header")
        if api_key.strip() != sandbox.config.api_key.strip():
            refuse("Invalid X-API-KEY header")
        try:
            timestamp = int(timestamp_text)
        except ValueError:
            refuse("Invalid X-TIMESTAMP header")
        try:
            window = check_window(int(window_text)) if window_text is not None else DEFAULT_WINDOW_MS
        except ValueError:
            refuse(f"Invalid X-WINDOW header: must be from 1 to {MAX_WINDOW_MS}")
        now = _now_ms()
        if now > timestamp + window:
            refuse("Request has expired")
        if timestamp > now + window:
            refuse("Request timestamp is too far in the future")
        if not verify(sandbox.config.api_key, signing_string(instruction, params, timestamp, window), signature):
            refuse("Invalid signature")

    # -- admin endpoints (unsigned)
    def _admin(self, method: str, path: str, raw_body: bytes) -> None:
        sandbox = self.server.sandbox
        ledger, api_key = sandbox.ledger, sandbox.config.api_key
        if method == "GET" and path == "/_sandbox/health":
            return self._json(200, {"ok": True})
        if method == "GET" and path == "/_sandbox/requests":
            return self._json(200, {"requests": ledger.request_times()})
        if method == "GET" and path == "/_sandbox/ledger":
            return self._json(200, ledger.snapshot(api_key))
        if method != "POST":
            return self._text(404, "404 not found")
        try:
            body = json.loads(raw_body.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRequest(f"Bad Request parse request payload error: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("Bad Request parse request payload error: expected a JSON object")
        try:
            if path == "/_sandbox/faults":
                return self._json(200, ledger.set_faults(body))
            if path == "/_sandbox/config":
                return self._json(200, ledger.set_config(body, api_key))
            if path == "/_sandbox/balances":
                return self._json(200, ledger.set_balances(body))
            if path == "/_sandbox/reset":
                ledger.reset(body.get("balances"))
                return self._json(200, ledger.snapshot(api_key))
            if path.startswith("/_sandbox/withdrawals/") and path.rsplit("/", 1)[1].isdigit():
                if "hold_status" not in body:
                    raise ValueError("body must have hold_status (a status string, or null to release)")
                return self._json(200, ledger.set_withdrawal_hold(int(path.rsplit("/", 1)[1]), body["hold_status"]))
        except ValueError as err:
            raise ApiError(400, "INVALID_CLIENT_REQUEST", str(err)) from None
        except LookupError:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Withdrawal not found") from None
        return self._text(404, "404 not found")


# --------------------------------------------------------------------------- the server


class Sandbox:
    """Owns the HTTP server and the ledger. `start()` serves in a background thread."""

    def __init__(self, config: SandboxConfig):
        verify_key_from_api_key(config.api_key)  # ConfigurationError unless a base64 32-byte public key
        self.config = config
        self.ledger = Ledger(config)
        blockchain_names(), custody_assets()  # load the OpenAPI enums now, not on the first request
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        server = _Server((self.config.host, self.config.port), _Handler)
        server.sandbox = self
        self._server = server
        host, port = str(server.server_address[0]), server.server_address[1]
        self._url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"  # noqa: S104 - a comparison
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-http", daemon=True)
        self._thread.start()
        log.info("sandbox listening on %s", self.url)

    @property
    def url(self) -> str:
        """The base URL of the bound server (still answers after stop(), for messages)."""
        if self._url is None:
            raise RuntimeError("sandbox not started")
        return self._url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for sock in list(server.open_connections):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("sandbox stopped")

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


def _env(name: str, default: Any = None) -> Any:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _balances_arg(text: str) -> dict[str, Decimal]:
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, sep, amount = item.partition("=")
        if not sep or not symbol.strip():
            raise argparse.ArgumentTypeError(f"expected SYMBOL=AMOUNT, got {item!r}")
        try:
            result[symbol.strip()] = _dec(amount, symbol)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return result


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devtools.sandbox",
        description="Local Backpack Exchange sandbox (balances, withdrawals, history) with fault injection. "
                    "Every option also reads the environment variable named in its help; the option wins.")
    a = p.add_argument
    a("--host", default=_env("SANDBOX_HOST", "127.0.0.1"), help="address to bind (SANDBOX_HOST; default 127.0.0.1)")
    a("--port", type=int, default=_env("SANDBOX_PORT", "8765"),
      help="port to bind, 0 for any free port (SANDBOX_PORT; default 8765)")
    a("--api-key", default=_env("SANDBOX_API_KEY"),
      help="the PUBLIC API key (base64 ED25519 verifying key) requests must be signed for (SANDBOX_API_KEY)")
    a("--api-key-file", default=_env("SANDBOX_API_KEY_FILE"),
      help="file holding the public API key, instead of --api-key (SANDBOX_API_KEY_FILE)")
    a("--balances", type=_balances_arg, default=_env("SANDBOX_BALANCES", ""),
      help='starting available balances, e.g. "USDC=1000,SOL=25" (SANDBOX_BALANCES)')
    a("--confirm-delay", type=float, default=_env("SANDBOX_CONFIRM_DELAY", "2.0"),
      help="seconds after creation a withdrawal reads confirmed (SANDBOX_CONFIRM_DELAY; default 2)")
    a("--history-lag", type=float, default=_env("SANDBOX_HISTORY_LAG", "1.0"),
      help="seconds after creation a withdrawal shows in the history (SANDBOX_HISTORY_LAG; default 1)")
    a("--hold-status", default=_env("SANDBOX_HOLD_STATUS"),
      help='status new withdrawals keep forever, e.g. "pending" or "ownershipVerificationRequired" '
           '(SANDBOX_HOLD_STATUS)')
    a("--ignore-filters", action="store_true", default=_env("SANDBOX_IGNORE_FILTERS", "") in ("1", "true"),
      help="answer the withdrawal history as if `id` and `clientId` were not filters, like older API versions "
           "(SANDBOX_IGNORE_FILTERS=1)")
    a("--redirect-to", default=_env("SANDBOX_REDIRECT_TO"),
      help="answer every exchange request with a 307 redirect to this base URL (SANDBOX_REDIRECT_TO)")
    a("--state-file", type=Path, default=_env("SANDBOX_STATE_FILE"),
      help="JSON file the ledger is saved to after every change and loaded from at start (SANDBOX_STATE_FILE)")
    a("--fault-5xx", type=_probability, default=_env("SANDBOX_FAULT_5XX", "0"),
      help="probability of a 503 SERVER_ERROR without processing (SANDBOX_FAULT_5XX)")
    a("--fault-429", type=_probability, default=_env("SANDBOX_FAULT_429", "0"),
      help="probability of a 429 TOO_MANY_REQUESTS with Retry-After: 1 (SANDBOX_FAULT_429)")
    a("--latency-ms", type=int, default=_env("SANDBOX_LATENCY_MS", "0"),
      help="delay added before handling each exchange request (SANDBOX_LATENCY_MS)")
    a("--fault-drop", type=_probability, default=_env("SANDBOX_FAULT_DROP", "0"),
      help="probability of a TCP reset before processing (SANDBOX_FAULT_DROP)")
    a("--fault-commit-then-drop", type=_probability, default=_env("SANDBOX_FAULT_COMMIT_THEN_DROP", "0"),
      help="probability that a withdrawal is recorded and the connection then reset (SANDBOX_FAULT_COMMIT_THEN_DROP)")
    a("--hang-ms", type=int, default=_env("SANDBOX_HANG_MS", "0"),
      help="sleep before a commit-then-drop reset, to provoke client read timeouts (SANDBOX_HANG_MS)")
    a("--seed", type=int, default=_env("SANDBOX_SEED"), help="seed for fault decisions (SANDBOX_SEED)")
    a("--ready-file", type=Path, default=_env("SANDBOX_READY_FILE"),
      help="once listening, write the URL to this file atomically (SANDBOX_READY_FILE)")
    a("--log-level", default=_env("SANDBOX_LOG_LEVEL", "INFO"), help="logging level (SANDBOX_LOG_LEVEL; default INFO)")
    return p


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = args.api_key
    if not api_key and args.api_key_file:
        api_key = Path(args.api_key_file).read_text().strip()
    if not api_key:
        parser.error("an API key is required: --api-key, --api-key-file, SANDBOX_API_KEY or SANDBOX_API_KEY_FILE")
    try:
        config = SandboxConfig(
            api_key=api_key, balances=args.balances, confirm_delay=args.confirm_delay,
            history_lag=args.history_lag, hold_status=args.hold_status, state_file=args.state_file,
            ignore_filters=args.ignore_filters, redirect_to=args.redirect_to,
            host=args.host, port=args.port,
            faults=Faults(p_5xx=args.fault_5xx, p_429=args.fault_429, latency_ms=args.latency_ms,
                          p_drop=args.fault_drop, p_commit_then_drop=args.fault_commit_then_drop,
                          hang_ms=args.hang_ms, seed=args.seed))
        sandbox = Sandbox(config)
    except (ValueError, OSError, ConfigurationError) as err:
        parser.error(str(err))

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    sandbox.start()
    if args.ready_file:
        _write_atomically(Path(args.ready_file), sandbox.url + "\n")
    print(f"sandbox listening on {sandbox.url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
