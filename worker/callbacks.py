"""Callbacks when a job ends: which URLs may be called, how a call is signed, and the call itself.

A service that submits through the HTTP intake may name a `callback_url`. When
the job ends, a Celery task of its own (`withdrawal.callback`) POSTs the job
record there, so a slow or dead receiver never holds up a step:

* only hosts on CALLBACK_ALLOWED_HOSTS are ever called (checked at submit and
  again right before each call, so a host taken off the list is not called);
* the body is signed with HMAC-SHA256 over `<timestamp>.<body>` with the secret
  of the token that submitted the job (CALLBACK_SECRETS); the receiver checks
  `X-Signature` and that `X-Timestamp` is recent;
* a redirect is never followed (it counts as a refusal), and a failed call is
  retried with backoff up to CALLBACK_MAX_ATTEMPTS.

Delivery is at least once: a receiver may see the same job's callback twice
(a worker that died after the POST), and keys its work on `job.job_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from bpx_worker.jobs.record import JobRecord

URL_MAX = 2048
EVENT_TYPE = "withdrawal.ended"
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Timestamp"


def url_problem(url: Any, allowed_hosts: Collection[str]) -> str | None:
    """Why `url` may not be called back, or None when it may.

    An entry of `allowed_hosts` is a host name (any port) or `host:port`,
    compared in lower case. No host is allowed when the list is empty.
    """
    if not isinstance(url, str):
        return "must be a string"
    if len(url) > URL_MAX:
        return f"must be at most {URL_MAX} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be an http or https URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return "must not contain whitespace or control characters"
    if not allowed_hosts:
        return "callbacks are not enabled on this service (CALLBACK_ALLOWED_HOSTS is empty)"
    host = parts.hostname.lower()
    effective_port = port or (443 if parts.scheme == "https" else 80)
    if host in allowed_hosts or f"{host}:{effective_port}" in allowed_hosts:
        return None
    return "its host is not on CALLBACK_ALLOWED_HOSTS"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`, the value of X-Signature."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def body(record: JobRecord) -> bytes:
    """What a callback sends: the event type and the job record, as documented."""
    payload = {"type": EVENT_TYPE, "job": record.model_dump(mode="json")}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Outcome:
    """How one call went: `delivered`, `retry` (worth another try) or `refused` (another try would not help)."""

    kind: Literal["delivered", "retry", "refused"]
    status: int | None = None
    error: str | None = None


def call(url: str, record: JobRecord, secret: str, *, timeout: float, user_agent: str,
         clock: Callable[[], float] = time.time) -> Outcome:
    """POST the signed record to `url` once, without following redirects.

    2xx is delivered; 5xx, 408, 429 and network failures are worth retrying;
    any other answer (a redirect, another 4xx) is refused.
    """
    payload = body(record)
    timestamp = int(clock())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "X-Job-Id": record.job_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, payload),
    }
    try:
        response = requests.post(url, data=payload, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        # The exception's text may carry the URL's query; its type says enough.
        return Outcome("retry", error=type(exc).__name__)
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return Outcome("delivered", status)
    if status >= 500 or status in (408, 429):
        return Outcome("retry", status, f"answered {status}")
    if 300 <= status < 400:
        return Outcome("refused", status, f"answered {status}; redirects are never followed")
    return Outcome("refused", status, f"answered {status}")
