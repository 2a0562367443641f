"""The one HTTP client of the exchange: signs each request, sends it, maps every failure to a type.

Failure types decide what the caller may do next (see `worker.errors`):

| what happened                                   | safe method (GET) | unsafe method (POST) |
|-------------------------------------------------|-------------------|----------------------|
| connection refused / connect timeout            | TransientError    | TransientError       |
| read timeout, reset or disconnect after sending | TransientError    | AmbiguousError       |
| 5xx                                             | TransientError    | AmbiguousError       |
| 429                                             | TransientError    | TransientError       |
| other 4xx                                       | RejectedError     | RejectedError        |

A GET is safe to repeat, so "maybe processed" is merely transient there. The
client never retries by itself: retries belong to the caller, so they never
multiply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import structlog
import urllib3.exceptions

from bpx_worker.arazzo.workflow import HttpRequest
from bpx_worker.errors import AmbiguousError, RejectedError, TransientError
from bpx_worker.exchange.signer import DEFAULT_WINDOW_MS, Signer

log = structlog.get_logger(__name__)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUTH_HEADERS = frozenset({"x-api-key", "x-signature", "x-timestamp", "x-window"})


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]
    url: str


class BackpackAuth(requests.auth.AuthBase):
    """Signs the final request: instruction, its own parameters, a fresh timestamp."""

    def __init__(self, signer: Signer, instruction: str, params: Mapping[str, Any], window: int):
        self.signer, self.instruction, self.params, self.window = signer, instruction, params, window

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        prepared.headers.update(self.signer.headers(self.instruction, self.params, self.window))
        return prepared


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _rejection(response: requests.Response) -> RejectedError:
    body = _body(response)
    if isinstance(body, Mapping) and "code" in body:
        return RejectedError(response.status_code, str(body["code"]), str(body.get("message", "")))
    # Parse failures come back as plain text, not JSON.
    return RejectedError(response.status_code, f"HTTP_{response.status_code}", str(body)[:500])


class BackpackClient:
    def __init__(
        self,
        base_url: str,
        signer: Signer | None,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        window_ms: int = DEFAULT_WINDOW_MS,
    ):
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.timeout = (connect_timeout, read_timeout)
        self.window_ms = window_ms
        self.session = requests.Session()  # pooled connections; no adapter retries

    @classmethod
    def from_settings(cls, settings, signer: Signer) -> "BackpackClient":
        return cls(settings.backpack_base_url, signer, connect_timeout=settings.http_connect_timeout,
                   read_timeout=settings.http_read_timeout, window_ms=settings.backpack_window_ms)

    def close(self) -> None:
        self.session.close()

    def _window(self, request: HttpRequest) -> int:
        for name, value in request.headers.items():
            if name.lower() == "x-window":
                return int(value)
        return self.window_ms

    def send(self, request: HttpRequest) -> Response:
        """Sign and send one request. Returns 2xx responses; raises a typed ExchangeError otherwise."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _AUTH_HEADERS}
        auth = None
        if request.instruction and self.signer is not None:
            auth = BackpackAuth(self.signer, request.instruction, request.signed_params(), self._window(request))
        data = None
        if request.body is not None:
            headers["Content-Type"] = request.content_type or "application/json; charset=utf-8"
            data = json.dumps(request.body, separators=(",", ":"))
        safe = request.method in _SAFE_METHODS
        url = self.base_url + request.path
        try:
            response = self.session.request(
                request.method, url, params=dict(request.query), data=data, headers=headers, auth=auth,
                timeout=self.timeout,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientError(f"connect timeout to {self.base_url}") from exc
        except requests.exceptions.ReadTimeout as exc:
            kind = TransientError if safe else AmbiguousError
            raise kind(f"read timeout after sending {request.method} {request.path}") from exc
        except requests.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise TransientError(f"cannot connect to {self.base_url}") from exc
            kind = TransientError if safe else AmbiguousError
            raise kind(f"connection lost after sending {request.method} {request.path}") from exc
        log.debug("exchange_response", method=request.method, path=request.path, status=response.status_code)
        if response.status_code == 429:
            raise TransientError("429 TOO_MANY_REQUESTS", status=429, retry_after=_retry_after(response))
        if response.status_code >= 500:
            kind = TransientError if safe else AmbiguousError
            raise kind(f"{response.status_code} from {request.method} {request.path}", status=response.status_code)
        if response.status_code >= 400:
            raise _rejection(response)
        return Response(response.status_code, _body(response), dict(response.headers), response.url)


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was never established, so nothing was sent."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError)
