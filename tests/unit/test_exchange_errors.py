"""The client's one error boundary: every requests exception maps into our tree, by when it can happen."""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any

import pytest
import urllib3.exceptions
from requests import exceptions as rex

from bpx_worker.errors import AmbiguousError, RejectedError, TransientError, UnsendableRequest, WorkerError
from bpx_worker.exchange.client import REDIRECT, map_transport_error

ExceptionClass = type[BaseException]
NO_POOL: Any = None  # the wrapped errors name a pool or connection only for their messages


def _all_subclasses(cls: ExceptionClass) -> set[ExceptionClass]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _all_subclasses(sub)
    return found


# Only the exceptions of `requests` itself; a test module's own subclasses would not count.
REQUESTS_EXCEPTIONS: set[ExceptionClass] = {
    c for c in _all_subclasses(rex.RequestException) if c.__module__ == "requests.exceptions"}

# Raised while the request is built or a connection is made: nothing reached the exchange.
BEFORE_WRITE_UNSENDABLE: set[ExceptionClass] = {
    rex.URLRequired, rex.MissingSchema, rex.InvalidSchema, rex.InvalidURL, rex.InvalidProxyURL,
    rex.InvalidHeader, rex.InvalidJSONError}
BEFORE_WRITE_TRANSIENT: set[ExceptionClass] = {rex.ConnectTimeout, rex.ProxyError}
# May happen once bytes were written (or cannot tell): the request may have been processed.
AFTER_WRITE: set[ExceptionClass] = {
    rex.RequestException, rex.HTTPError, rex.ConnectionError, rex.SSLError, rex.Timeout, rex.ReadTimeout,
    rex.TooManyRedirects, rex.ChunkedEncodingError, rex.ContentDecodingError, rex.StreamConsumedError,
    rex.RetryError, rex.UnrewindableBodyError, rex.JSONDecodeError}
REDIRECTS: set[ExceptionClass] = {rex.TooManyRedirects, rex.UnrewindableBodyError}


def _instance(cls: ExceptionClass) -> BaseException:
    if issubclass(cls, rex.JSONDecodeError):
        return cls("Expecting value", "<html>", 0)
    return cls("boom")


def _name(cls: ExceptionClass) -> str:
    return cls.__name__


def _sorted(classes: set[ExceptionClass]) -> list[ExceptionClass]:
    return sorted(classes, key=_name)


def test_every_requests_exception_is_classified():
    """A requests release that adds an exception fails here until it is placed in the table."""
    classified = BEFORE_WRITE_UNSENDABLE | BEFORE_WRITE_TRANSIENT | AFTER_WRITE
    assert classified == REQUESTS_EXCEPTIONS, {c.__name__ for c in REQUESTS_EXCEPTIONS ^ classified}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("cls", _sorted(REQUESTS_EXCEPTIONS), ids=_name)
def test_every_requests_exception_maps_into_the_error_tree(cls, method):
    mapped = map_transport_error(_instance(cls), method, f"{method} /x")
    assert isinstance(mapped, WorkerError)
    assert isinstance(mapped, TransientError | AmbiguousError | RejectedError | UnsendableRequest)


@pytest.mark.parametrize("cls", _sorted(AFTER_WRITE), ids=_name)
def test_after_the_write_a_post_is_ambiguous(cls):
    assert type(map_transport_error(_instance(cls), "POST", "POST /wapi/v1/capital/withdrawals")) is AmbiguousError


@pytest.mark.parametrize("cls", _sorted(AFTER_WRITE - REDIRECTS), ids=_name)
def test_after_the_write_a_get_is_transient(cls):
    assert type(map_transport_error(_instance(cls), "GET", "GET /api/v1/capital")) is TransientError


@pytest.mark.parametrize("cls", _sorted(REDIRECTS), ids=_name)
def test_a_redirect_on_a_read_is_rejected_with_its_own_code(cls):
    mapped = map_transport_error(_instance(cls), "GET", "GET /api/v1/capital")
    assert isinstance(mapped, RejectedError) and mapped.code == REDIRECT


@pytest.mark.parametrize("cls", _sorted(BEFORE_WRITE_UNSENDABLE), ids=_name)
def test_a_request_that_cannot_be_built_is_unsendable_never_ambiguous(cls):
    for method in ("GET", "POST"):
        assert type(map_transport_error(_instance(cls), method, f"{method} /x")) is UnsendableRequest


@pytest.mark.parametrize("cls", _sorted(BEFORE_WRITE_TRANSIENT), ids=_name)
def test_no_connection_is_transient_even_on_a_post(cls):
    assert type(map_transport_error(_instance(cls), "POST", "POST /x")) is TransientError


# --- the shapes requests really raises: a wrapper around urllib3's MaxRetryError or ProtocolError


def _max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(NO_POOL, "/x", reason)


REFUSED = rex.ConnectionError(_max_retry(urllib3.exceptions.NewConnectionError(NO_POOL, "Connection refused")))
DNS = rex.ConnectionError(_max_retry(
    urllib3.exceptions.NameResolutionError("exchange.invalid", NO_POOL, socket.gaierror())))
CLOSED_POOL = rex.ConnectionError(urllib3.exceptions.ClosedPoolError(NO_POOL, "Pool is closed."))
RESET = rex.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))
DISCONNECTED = rex.ConnectionError(urllib3.exceptions.ProtocolError(
    "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response")))
BODY_TIMEOUT = rex.ConnectionError(urllib3.exceptions.ReadTimeoutError(NO_POOL, "/x", "Read timed out."))
CERTIFICATE = rex.SSLError(_max_retry(urllib3.exceptions.SSLError(ssl.SSLCertVerificationError(1, "verify failed"))))
TLS_EOF = rex.SSLError(_max_retry(urllib3.exceptions.SSLError(ssl.SSLEOFError(8, "EOF occurred"))))


@pytest.mark.parametrize("exc", [REFUSED, DNS, CLOSED_POOL, CERTIFICATE],
                         ids=["refused", "dns", "closed-pool", "certificate"])
def test_never_connected_is_transient_on_a_post(exc):
    assert type(map_transport_error(exc, "POST", "POST /x")) is TransientError


@pytest.mark.parametrize("exc", [RESET, DISCONNECTED, BODY_TIMEOUT, TLS_EOF],
                         ids=["reset", "disconnected", "body-timeout", "tls-eof"])
def test_connected_then_lost_is_ambiguous_on_a_post_and_transient_on_a_get(exc):
    assert type(map_transport_error(exc, "POST", "POST /x")) is AmbiguousError
    assert type(map_transport_error(exc, "GET", "GET /x")) is TransientError


@pytest.mark.parametrize("exc", [
    urllib3.exceptions.ProtocolError("Connection aborted."),
    urllib3.exceptions.DecodeError("bad gzip"),
    http.client.IncompleteRead(b"par", 10),
    ConnectionResetError(104, "reset"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
], ids=["urllib3-protocol", "urllib3-decode", "incomplete-read", "os-reset", "unicode"])
def test_a_library_error_escaping_unwrapped_is_still_ambiguous_on_a_post(exc):
    assert type(map_transport_error(exc, "POST", "POST /x")) is AmbiguousError


def test_the_message_names_the_request():
    mapped = map_transport_error(RESET, "POST", "POST /wapi/v1/capital/withdrawals")
    assert "POST /wapi/v1/capital/withdrawals" in str(mapped)

