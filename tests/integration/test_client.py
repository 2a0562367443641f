"""The client's failure mapping, against a real sandbox server with faults injected."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bpx_worker.arazzo.workflow import HttpRequest
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.errors import AmbiguousError, RejectedError, TransientError
from devtools.sandbox import Sandbox, SandboxConfig
from bpx_worker.exchange.signer import Signer

BALANCES = HttpRequest("GET", "/api/v1/capital", "balanceQuery")
WITHDRAW = HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw",
                       body={"symbol": "USDC", "blockchain": "Solana", "address": "Addr", "quantity": "1",
                             "clientId": "wd-client-test"})


@pytest.fixture
def exchange():
    signer, _ = Signer.generate()
    server = Sandbox(SandboxConfig(api_key=signer.api_key, balances={"USDC": Decimal("100")}))
    server.start()
    yield server, BackpackClient(server.url, signer, read_timeout=0.5)
    server.stop()


def _faults(server, **values):
    import requests

    requests.post(server.url + "/_sandbox/faults", json=values, timeout=5).raise_for_status()


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
