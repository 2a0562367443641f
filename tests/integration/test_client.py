"""The client's failure mapping, against a real sandbox server with faults injected."""

from __future__ import annotations

import contextlib
import socket
import threading
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import AmbiguousError, ConfigurationError, RejectedError, TransientError, UnsendableRequest
from bpx_worker.exchange.client import REDIRECT, BackpackClient
from bpx_worker.exchange.signer import Signer
from devtools.sandbox import Sandbox, SandboxConfig

BALANCES = HttpRequest("GET", "/api/v1/capital", "balanceQuery")
WITHDRAW_BODY = {"symbol": "USDC", "blockchain": "Solana", "address": "Addr", "quantity": "1",
                 "clientId": "wd-client-test"}
WITHDRAW = HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body=WITHDRAW_BODY)


@pytest.fixture
def exchange():
    signer, _ = Signer.generate()
    server = Sandbox(SandboxConfig(api_key=signer.api_key, balances={"USDC": Decimal("100")}))
    server.start()
    yield server, BackpackClient(server.url, signer, read_timeout=0.5)
    server.stop()


def _faults(server, **values):
    requests.post(server.url + "/_sandbox/faults", json=values, timeout=5).raise_for_status()


def server_admin_config(server, **values):
    requests.post(server.url + "/_sandbox/config", json=values, timeout=5).raise_for_status()


@pytest.mark.parametrize("faults, request_, error", [
    ({"p_5xx": 1.0}, BALANCES, TransientError),
    ({"p_5xx": 1.0}, WITHDRAW, AmbiguousError),
    ({"p_429": 1.0}, BALANCES, TransientError),
    ({"p_429": 1.0}, WITHDRAW, TransientError),
    ({"p_drop": 1.0}, BALANCES, TransientError),
    ({"p_drop": 1.0}, WITHDRAW, AmbiguousError),
    ({"p_commit_then_drop": 1.0}, WITHDRAW, AmbiguousError),
    ({"p_commit_then_drop": 1.0, "hang_ms": 1500}, WITHDRAW, AmbiguousError),  # a read timeout
    ({"latency_ms": 1500}, BALANCES, TransientError),  # a read timeout on a GET is safe to repeat
])
def test_failures_map_to_what_may_be_done_next(exchange, faults, request_, error):
    server, client = exchange
    _faults(server, **faults)
    with pytest.raises(error) as caught:
        client.send(request_)
    assert type(caught.value) is error


def test_429_carries_retry_after(exchange):
    server, client = exchange
    _faults(server, p_429=1.0)
    with pytest.raises(TransientError) as caught:
        client.send(BALANCES)
    assert caught.value.status == 429 and caught.value.retry_after == 1.0


def test_plain_text_4xx_is_a_rejection_with_a_synthetic_code(exchange):
    _, client = exchange
    bad = HttpRequest("POST", WITHDRAW.path, "withdraw", body={"symbol": "USDC"})
    with pytest.raises(RejectedError) as caught:
        client.send(bad)
    assert caught.value.code == "HTTP_400"
    assert "parse" in caught.value.message.lower()


def test_success_returns_parsed_body_with_decimal_strings(exchange):
    _, client = exchange
    response = client.send(BALANCES)
    assert response.status == 200
    assert Decimal(response.body["USDC"]["available"]) == Decimal("100")


# --------------------------------------------------------------------------- helpers: other real servers


class Trap:
    """A second local HTTP server that records every request it receives (a redirect's target)."""

    def __init__(self) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.append({"method": self.command, "path": self.path, "headers": headers,
                                 "body": body.decode("utf-8", "replace")})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trap():
    server = Trap()
    yield server
    server.close()


@contextmanager
def canned(response: bytes):
    """A raw TCP server that reads one request and answers it with exactly `response` bytes, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests_seen: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                requests_seen.append(head + b"\r\n\r\n" + body)
                conn.sendall(response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests_seen
    finally:
        listener.close()
        thread.join(timeout=5)


SECRET_2FA = "2fa-token-123456"
WITHDRAW_2FA = HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw",
                           body={**WITHDRAW_BODY, "twoFactorToken": SECRET_2FA})


# --------------------------------------------------------------------------- redirects are never followed


def test_a_plain_requests_call_would_carry_the_credentials_to_the_redirect_target(exchange, trap):
    """The hazard the client guards against, shown with requests' defaults (the trap does receive them)."""
    server, client = exchange
    server_admin_config(server, redirect_to=trap.url)
    body = WITHDRAW_2FA.body
    headers = client.signer.headers("withdraw", body)
    requests.post(server.url + WITHDRAW_2FA.path, json=body, headers=headers, timeout=5)
    assert trap.received and trap.received[0]["headers"]["x-signature"] == headers["X-SIGNATURE"]
    assert SECRET_2FA in trap.received[0]["body"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_on_a_read_is_refused_with_its_own_code_and_never_followed(exchange, trap, status):
    server, client = exchange
    server_admin_config(server, redirect_to=trap.url, redirect_status=status)
    with pytest.raises(RejectedError) as caught:
        client.send(BALANCES)
    assert caught.value.code == REDIRECT and caught.value.status == status
    assert "127.0.0.1" in caught.value.message  # names where it pointed
    assert trap.received == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_on_the_withdrawal_is_ambiguous_and_the_credentials_never_leave(exchange, trap, status):
    server, client = exchange
    server_admin_config(server, redirect_to=trap.url, redirect_status=status)
    with pytest.raises(AmbiguousError) as caught:
        client.send(WITHDRAW_2FA)
    assert caught.value.status == status
    assert trap.received == []  # not the API key, not the signature, not the 2FA token
    assert SECRET_2FA not in str(caught.value)


def test_the_session_refuses_redirects_even_when_asked_to_follow(exchange, trap):
    server, client = exchange
    server_admin_config(server, redirect_to=trap.url)
    answer = client.session.request("POST", server.url + WITHDRAW_2FA.path, json=WITHDRAW_2FA.body,
                                    headers=client.signer.headers("withdraw", WITHDRAW_2FA.body),
                                    allow_redirects=True, timeout=5)
    assert answer.status_code == 307 and answer.history == []
    assert trap.received == []


# --------------------------------------------------------------------------- query values as signed


def test_a_boolean_query_value_goes_on_the_wire_as_signed(exchange):
    """The sandbox verifies the signature against the query it received: `true`, never `True`."""
    _, client = exchange
    request = HttpRequest("GET", "/api/v1/account/limits/withdrawal", "maxWithdrawalQuantity",
                          {"symbol": "USDC", "autoBorrow": True, "autoLendRedeem": False})
    response = client.send(request)
    assert response.body == {"symbol": "USDC", "autoBorrow": True, "autoLendRedeem": False,
                             "maxWithdrawalQuantity": "100"}


# --------------------------------------------------------------------------- filters are checked, not trusted


def _withdraw(client: BackpackClient, client_id: str) -> int:
    body = {**WITHDRAW_BODY, "clientId": client_id}
    return client.send(HttpRequest("POST", WITHDRAW.path, "withdraw", body=body)).body["id"]


def _history_reads(server: Sandbox) -> int:
    return requests.get(server.url + "/_sandbox/ledger", timeout=5).json()["requests"]["GET " + WITHDRAW.path]


@pytest.fixture
def history(exchange):
    """Five withdrawals, visible at once, on an exchange that ignores the id and clientId filters."""
    server, client = exchange
    server_admin_config(server, history_lag=0)
    ids = {f"wd-filter-{n}": _withdraw(client, f"wd-filter-{n}") for n in range(1, 6)}
    server_admin_config(server, ignore_filters=True)
    return server, client, ids


def _lookup(**query) -> HttpRequest:
    return HttpRequest("GET", WITHDRAW.path, "withdrawalQueryAll", query)


def test_the_sandbox_option_really_ignores_the_filters(history):
    server, client, ids = history
    raw = requests.get(server.url + WITHDRAW.path, params={"id": ids["wd-filter-2"]}, timeout=5,
                       headers=client.signer.headers("withdrawalQueryAll", {"id": ids["wd-filter-2"]}))
    assert len(raw.json()) == 5


def test_an_id_lookup_finds_its_withdrawal_when_the_exchange_ignores_the_filter(history):
    _, client, ids = history
    response = client.send(_lookup(id=ids["wd-filter-2"]))
    assert [(w["id"], w["clientId"]) for w in response.body] == [(ids["wd-filter-2"], "wd-filter-2")]


def test_a_client_id_lookup_finds_its_withdrawal_when_the_exchange_ignores_the_filter(history):
    _, client, ids = history
    response = client.send(_lookup(clientId="wd-filter-4"))
    assert [(w["id"], w["clientId"]) for w in response.body] == [(ids["wd-filter-4"], "wd-filter-4")]


def test_a_lookup_pages_the_history_when_the_filter_is_ignored(history):
    server, client, ids = history
    client.history_page_size = 2
    before = _history_reads(server)
    response = client.send(_lookup(clientId="wd-filter-1"))  # the oldest: the third page, newest first
    assert [w["id"] for w in response.body] == [ids["wd-filter-1"]]
    assert _history_reads(server) - before == 1 + 3


def test_a_lookup_of_a_missing_withdrawal_answers_empty_when_the_filter_is_ignored(history):
    _, client, _ = history
    assert client.send(_lookup(clientId="wd-filter-none")).body == []


def test_the_history_search_is_bounded(history):
    server, client, _ = history
    client.history_page_size, client.history_max_pages = 2, 2
    before = _history_reads(server)
    with pytest.raises(TransientError, match="absence not proven"):
        client.send(_lookup(clientId="wd-filter-none"))
    assert _history_reads(server) - before == 1 + 2


def test_a_filter_the_exchange_honours_costs_one_request(history):
    server, client, ids = history
    server_admin_config(server, ignore_filters=False)
    before = _history_reads(server)
    assert [w["id"] for w in client.send(_lookup(id=ids["wd-filter-3"])).body] == [ids["wd-filter-3"]]
    assert _history_reads(server) - before == 1


# --------------------------------------------------------------------------- the error boundary over real sockets


TRUNCATED_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"40\r\n{\"id\": 1, \"sta")
BAD_GZIP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 10\r\nConnection: close\r\n\r\nnot-gzip!!")
BROKEN_JSON = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n"
               b"Connection: close\r\n\r\n{\"id\": 1,")
SHORT_BODY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
              b"Connection: close\r\n\r\n{\"id\": 1}")


@pytest.mark.parametrize("answer, library_error", [
    (TRUNCATED_CHUNKED, requests.exceptions.ChunkedEncodingError),
    (BAD_GZIP, requests.exceptions.ContentDecodingError),
    (BROKEN_JSON, requests.exceptions.JSONDecodeError),
    (SHORT_BODY, requests.exceptions.ChunkedEncodingError),
], ids=["truncated-chunked", "bad-gzip", "broken-json", "short-body"])
def test_an_answer_that_cannot_be_read_is_ambiguous_on_the_post_and_transient_on_a_get(answer, library_error):
    signer, _ = Signer.generate()
    for request_, error in ((WITHDRAW, AmbiguousError), (BALANCES, TransientError)):
        with canned(answer) as (url, seen), pytest.raises(error) as caught:
            BackpackClient(url, signer).send(request_)
        assert type(caught.value) is error and seen  # the request did reach the server
        assert isinstance(caught.value.__cause__, library_error)


def test_connection_refused_is_transient_on_the_post():
    signer, _ = Signer.generate()
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(TransientError) as caught:
        BackpackClient(f"http://127.0.0.1:{port}", signer).send(WITHDRAW)
    assert type(caught.value) is TransientError
    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


def test_a_request_that_cannot_be_built_is_refused_before_anything_is_sent(exchange):
    server, client = exchange
    bad_header = HttpRequest("GET", BALANCES.path, "balanceQuery", headers={"X-Note": "line\nbreak"})
    with pytest.raises(UnsendableRequest) as caught:
        client.send(bad_header)
    assert isinstance(caught.value.__cause__, requests.exceptions.InvalidHeader)
    listed = HttpRequest("GET", "/api/v1/account/limits/withdrawal", "maxWithdrawalQuantity",
                         {"symbol": ["USDC", "SOL"]})
    with pytest.raises(UnsendableRequest, match="scalar"):
        client.send(listed)
    assert requests.get(server.url + "/_sandbox/ledger", timeout=5).json()["requests"] == {
        "GET /api/v1/capital": 0, "POST /wapi/v1/capital/withdrawals": 0, "GET /wapi/v1/capital/withdrawals": 0,
        "GET /api/v1/account/limits/withdrawal": 0}


def test_a_base_url_that_is_not_http_is_refused_at_construction():
    with pytest.raises(ConfigurationError, match="BACKPACK_BASE_URL"):
        BackpackClient("exchange.example/api", None)


# --------------------------------------------------------------------------- one pooled session


def test_one_pooled_keep_alive_session_without_adapter_retries(exchange):
    server, client = exchange
    adapter = client.session.get_adapter(server.url)
    assert adapter.max_retries.total == 0 and adapter.max_retries.read is False
    session = client.session
    client.send(BALANCES)
    client.send(BALANCES)
    assert client.session is session
    pools = [adapter.poolmanager.pools[key] for key in adapter.poolmanager.pools.keys()]  # noqa: SIM118 - not a dict
    assert [(p.num_connections, p.num_requests) for p in pools] == [(1, 2)]  # the connection was kept alive
