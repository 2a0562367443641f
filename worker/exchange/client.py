"""The one HTTP client of the exchange: signs each request, sends it, maps every failure to a type.

Every failure leaves this module as a type of `bpx_worker.errors`, chained with
`from` to the library's exception (`map_transport_error` is the one boundary).
The type decides what the caller may do next. "Before" means nothing can have
reached the exchange; "after" means the request may have been processed, so on a
non-idempotent method (POST) it is ambiguous: look it up, never re-send.

| what happened (requests / urllib3 exception)                  | when   | GET (safe)             | POST           |
|----------------------------------------------------------------|--------|------------------------|----------------|
| request cannot be built: `InvalidURL`, `InvalidProxyURL`,      | before | UnsendableRequest      | Unsendable-    |
|   `MissingSchema`, `InvalidSchema`, `URLRequired`,             |        | (a ConfigurationError) | Request        |
|   `InvalidHeader`, `InvalidJSONError`, a bad X-Window, a       |        |                        |                |
|   non-scalar query value, a header value that is not latin-1   |        |                        |                |
| cannot connect: refused, DNS (`ConnectionError` from           | before | TransientError         | TransientError |
|   `NewConnectionError`/`NameResolutionError`, a closed pool),  |        |                        |                |
|   `ConnectTimeout`, `ProxyError` (proxy not reached),          |        |                        |                |
|   `SSLError` from certificate verification                     |        |                        |                |
| read timeout, reset or disconnect: `ReadTimeout`, any other    | after  | TransientError         | AmbiguousError |
|   `ConnectionError` or `SSLError`, a bare `Timeout`            |        |                        |                |
| body cut short or unreadable: `ChunkedEncodingError`,          | after  | TransientError         | AmbiguousError |
|   `ContentDecodingError`, `StreamConsumedError`, a 2xx JSON    |        |                        |                |
|   body that does not parse (`JSONDecodeError`)                 |        |                        |                |
| redirect: a 3xx answer, `TooManyRedirects`,                    | after  | RejectedError REDIRECT | AmbiguousError |
|   `UnrewindableBodyError`; never followed, so the API key,     |        |                        |                |
|   signature and 2FA token never leave for another host         |        |                        |                |
| anything else from the transport: `RetryError`, `HTTPError`,   | after  | TransientError         | AmbiguousError |
|   bare `RequestException`, urllib3 or http.client errors,      |        |                        |                |
|   `OSError`, `ValueError`                                      |        |                        |                |
| 5xx                                                            | after  | TransientError         | AmbiguousError |
| 429                                                            | after  | TransientError         | TransientError |
|                                                                |        | (`retry_after`)        | (`retry_after`)|
| other 4xx                                                      | after  | RejectedError (code)   | RejectedError  |

A GET is safe to repeat, so "maybe processed" is merely transient there. A
redirect on a read is terminal (`REDIRECT`): the exchange would answer the same
again, and following it would send the credentials elsewhere. The client never
retries by itself (no adapter retries): retries belong to the caller, so they
never multiply. One client, one pooled keep-alive Session, per process.

Query values go on the wire exactly as they are signed (`signer.rendered`), and
filtered reads of the withdrawal history are checked, not trusted (`filters`).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
import urllib3.exceptions
from requests import exceptions as rex
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import (
    AmbiguousError,
    ConfigurationError,
    RejectedError,
    TransientError,
    UnsendableRequest,
    WorkerError,
)
from bpx_worker.exchange import filters
from bpx_worker.exchange.ratelimit import RateLimiter
from bpx_worker.exchange.signer import DEFAULT_WINDOW_MS, Signer, check_window, rendered

log = structlog.get_logger(__name__)

REDIRECT = "REDIRECT"  # RejectedError.code of a redirect answering a read

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUTH_HEADERS = frozenset({"x-api-key", "x-signature", "x-timestamp", "x-window"})
_SCALARS = (str, int, float, bool, Decimal)

# Raised while the request is built: nothing can have been sent. JSONDecodeError
# is an InvalidJSONError too, but it comes from reading an answer (handled first).
_UNSENDABLE = (rex.URLRequired, rex.MissingSchema, rex.InvalidSchema, rex.InvalidURL, rex.InvalidHeader,
               rex.InvalidJSONError)
_REDIRECTS = (rex.TooManyRedirects, rex.UnrewindableBodyError)
# Exceptions of the HTTP stack that may escape a send; anything else (a Celery
# time limit, a bug) propagates as it is.
_TRANSPORT = (rex.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)
# Causes that prove no connection was made, so nothing was written.
_NOT_CONNECTED = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                  urllib3.exceptions.ClosedPoolError, urllib3.exceptions.EmptyPoolError)


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


class NoRedirectSession(requests.Session):
    """A pooled keep-alive Session that never follows a redirect, whatever a caller passes.

    `requests` re-sends custom headers (X-API-KEY, X-SIGNATURE) and, on 307/308,
    the body (the 2FA token) to wherever `Location` points. Here the 3xx is
    returned as it is, and the client maps it to an error.
    """

    def __init__(self, pool_size: int = 10) -> None:
        super().__init__()
        self.max_redirects = 0
        # The urllib3 default, spelled out: no retries of any kind (connect, read,
        # status, redirect); read errors raised as themselves so a read timeout
        # stays a ReadTimeout. One kept-alive connection per pool slot: a smaller pool
        # would close a connection after each request once more threads send at once.
        adapter = HTTPAdapter(max_retries=Retry(total=0, read=False, redirect=False), pool_maxsize=pool_size)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def resolve_redirects(self, resp: requests.Response, req: requests.PreparedRequest,
                          *args: Any, **kwargs: Any) -> Generator[requests.Response, None, None]:
        yield from ()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (args, urllib3 `reason`, `__cause__`)."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        # Only explicit wrapping: `__context__` may hold an unrelated error being handled.
        for linked in (getattr(current, "reason", None), current.__cause__):
            if isinstance(linked, BaseException):
                stack.append(linked)


def _never_connected(exc: BaseException) -> bool:
    """True when the connection was never established, so nothing was sent."""
    return any(isinstance(c, _NOT_CONNECTED) for c in _causes(exc))


def _certificate_refused(exc: BaseException) -> bool:
    """True when TLS failed verifying the server's certificate: in the handshake, before any request byte."""
    return any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(exc))


def map_transport_error(exc: BaseException, method: str, what: str) -> WorkerError:
    """The error of our tree for an exception raised sending a request or reading its answer.

    `what` names the request in the message (method and path, never a secret).
    The caller raises the result `from exc`.
    """
    safe = method.upper() in _SAFE_METHODS
    after = TransientError if safe else AmbiguousError
    if isinstance(exc, rex.JSONDecodeError):
        return after(f"unreadable JSON answer to {what}")
    if isinstance(exc, _UNSENDABLE):
        return UnsendableRequest(f"cannot send {what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.ConnectTimeout):
        return TransientError(f"connect timeout: {what} not sent")
    if isinstance(exc, rex.ProxyError):
        return TransientError(f"cannot reach the proxy: {what} not sent")
    if isinstance(exc, rex.SSLError) and _certificate_refused(exc):
        return TransientError(f"TLS certificate of the exchange refused: {what} not sent")
    if isinstance(exc, rex.ConnectionError | urllib3.exceptions.HTTPError) and _never_connected(exc):
        return TransientError(f"cannot connect: {what} not sent")
    if isinstance(exc, _REDIRECTS):
        answer = getattr(exc, "response", None)
        status = answer.status_code if answer is not None else 0
        if safe:
            return RejectedError(status, REDIRECT, f"{what} was redirected; redirects are not followed")
        return AmbiguousError(f"{what} was redirected; not followed, the outcome is unknown", status=status or None)
    if isinstance(exc, rex.ReadTimeout):
        return after(f"read timeout after sending {what}")
    if isinstance(exc, rex.ChunkedEncodingError | rex.ContentDecodingError | rex.StreamConsumedError):
        return after(f"answer to {what} cut short or unreadable ({type(exc).__name__})")
    return after(f"connection failed after sending {what} ({type(exc).__name__})")


def _body(response: requests.Response) -> Any:
    """An error answer's body: JSON when it parses, else its text (parse failures come back as text)."""
    try:
        return response.json()
    except ValueError:
        return response.text


def _success_body(response: requests.Response) -> Any:
    """A 2xx answer's body: JSON unless it says it is text. Raises JSONDecodeError on broken JSON."""
    if not response.content:
        return None
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith("text/"):
        return response.text
    return response.json()


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


def _redirect(response: requests.Response, method: str, what: str) -> WorkerError:
    target = urlsplit(response.headers.get("Location", "")).netloc or "the same host"
    status = response.status_code
    if method.upper() in _SAFE_METHODS:
        return RejectedError(status, REDIRECT, f"{what} answered {status}, a redirect to {target}; not followed")
    return AmbiguousError(f"{what} answered {status}, a redirect to {target}; not followed, the outcome is unknown",
                          status=status)


def _query(request: HttpRequest) -> dict[str, str]:
    for name, value in request.query.items():
        if value is not None and not isinstance(value, _SCALARS):
            raise UnsendableRequest(f"query parameter {name!r} of {request.method} {request.path} "
                                    f"must be a scalar, got {type(value).__name__}")
    return rendered(request.query)


class BackpackClient:
    """Signs and sends requests to the exchange over one pooled Session; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        signer: Signer | None,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        window_ms: int = DEFAULT_WINDOW_MS,
        history_page_size: int = 1000,
        history_max_pages: int = 10,
        limiter: RateLimiter | None = None,
        pool_size: int = 10,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"BACKPACK_BASE_URL must be an absolute http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.timeout = (connect_timeout, read_timeout)
        self.window_ms = window_ms
        self.history_page_size = history_page_size
        self.history_max_pages = history_max_pages
        self.session = NoRedirectSession(pool_size)
        self._env_settings: dict[str, Any] | None = None
        # Every request waits for its slot of the shared rate limit (exchange/ratelimit.py) before it is signed.
        self.limiter = limiter
        self._reserved = threading.local()  # a turn taken by reserve_slot, per thread

    @classmethod
    def from_settings(cls, settings: Any, signer: Signer | None,
                      limiter: RateLimiter | None = None) -> BackpackClient:
        return cls(settings.backpack_base_url, signer, connect_timeout=settings.http_connect_timeout,
                   read_timeout=settings.http_read_timeout, window_ms=settings.backpack_window_ms, limiter=limiter,
                   pool_size=max(10, settings.concurrency()))

    def close(self) -> None:
        self.session.close()

    def _window(self, request: HttpRequest) -> int:
        for name, value in request.headers.items():
            if name.lower() == "x-window":
                try:
                    return check_window(int(value))
                except ValueError:
                    raise UnsendableRequest(f"X-Window header {value!r} is not an integer from 1 to 60000") from None
        return self.window_ms

    def send(self, request: HttpRequest, *, background: bool = False) -> Response:
        """Sign and send one request. Returns 2xx responses; raises a typed error otherwise.

        A filtered read of the withdrawal history returns only the items that
        match its filters, even when the exchange ignored them. A `background`
        request (a poll) takes its rate-limit slot only when one is free now:
        it yields to every other request while the limit binds.
        """
        def send_once(r: HttpRequest) -> Response:
            return self._send_once(r, background)

        response = send_once(request)
        found = filters.filtered_list(request)
        if found is None:
            return response
        spec, wanted = found
        if not isinstance(response.body, list) or filters.honoured(response.body, wanted):
            return response  # not a list: the step's criteria judge it
        log.warning("exchange_ignored_filter", path=request.path, filters=sorted(wanted))
        items = filters.search_history(send_once, request, spec, wanted,
                                       page_size=self.history_page_size, max_pages=self.history_max_pages)
        return Response(response.status, items, response.headers, response.url)

    def _prepare(self, request: HttpRequest) -> tuple[requests.PreparedRequest, dict[str, Any]]:
        """Build the final, signed request. Nothing is sent; every failure is UnsendableRequest."""
        what = f"{request.method} {request.path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _AUTH_HEADERS}
        query = _query(request)
        data = None
        if request.body is not None:
            headers["Content-Type"] = request.content_type or "application/json; charset=utf-8"
            try:
                data = json.dumps(request.body, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise UnsendableRequest(f"cannot encode the body of {what}: {exc}") from exc
        auth = None
        if request.instruction and self.signer is not None:
            # The signature covers exactly what goes on the wire: the rendered query, or the body.
            signed = request.body if request.body is not None else query
            auth = BackpackAuth(self.signer, request.instruction, signed, self._window(request))
        try:
            prepared = self.session.prepare_request(requests.Request(
                request.method, self.base_url + request.path, params=query, data=data, headers=headers, auth=auth))
            for value in prepared.headers.values():
                if isinstance(value, str):
                    value.encode("latin-1")  # as http.client will, but here, before anything is sent
            settings = self._environment()
        except (rex.RequestException, ValueError, TypeError) as exc:
            if isinstance(exc, UnicodeEncodeError):
                raise UnsendableRequest(f"cannot send {what}: a header value is not latin-1") from exc
            raise UnsendableRequest(f"cannot send {what}: {type(exc).__name__}: {exc}") from exc
        return prepared, settings

    def _environment(self) -> dict[str, Any]:
        """Proxies and CA bundle from the environment, read once: every request goes to the same base URL.

        (requests would re-read the environment and the proxy bypass list on every request.)
        """
        if self._env_settings is None:
            self._env_settings = self.session.merge_environment_settings(self.base_url + "/", {}, None, None, None)
        return self._env_settings

    def reserve_slot(self) -> None:
        """Wait now for this thread's next request's turn under the shared rate limit.

        For a request that moves money: its caller records it as `sending` only once the turn is
        taken, so a worker that dies while waiting leaves no mark of a request that never left.
        Raises RateLimited (nothing reserved) when the wait would be too long. The reservation is
        used by this thread's next request within a second, and lapses otherwise.
        """
        if self.limiter is not None:
            self.limiter.acquire()
            self._reserved.until = time.monotonic() + 1.0

    def _send_once(self, request: HttpRequest, background: bool = False) -> Response:
        what = f"{request.method} {request.path}"
        reserved = getattr(self._reserved, "until", 0.0) >= time.monotonic()
        self._reserved.until = 0.0
        if self.limiter is not None and not reserved:
            # Before signing, so the timestamp is fresh; RateLimited means nothing was sent.
            self.limiter.acquire(background)
        prepared, settings = self._prepare(request)
        try:
            response = self.session.send(prepared, timeout=self.timeout, allow_redirects=False, **settings)
        except _TRANSPORT as exc:
            raise map_transport_error(exc, request.method, what) from exc
        status = response.status_code
        log.debug("exchange_response", method=request.method, path=request.path, status=status)
        if 300 <= status < 400:
            raise _redirect(response, request.method, what)
        if status == 429:
            if self.limiter is not None:
                self.limiter.slow_down(_retry_after(response))
            raise TransientError("429 TOO_MANY_REQUESTS", status=429, retry_after=_retry_after(response))
        if status >= 500:
            kind = TransientError if request.method.upper() in _SAFE_METHODS else AmbiguousError
            raise kind(f"{status} from {what}", status=status)
        if status >= 400:
            raise _rejection(response)
        try:
            body = _success_body(response)
        except _TRANSPORT as exc:
            raise map_transport_error(exc, request.method, what) from exc
        return Response(status, body, dict(response.headers), response.url)
