"""The workflow run in process (no Celery) against the sandbox over real HTTP."""

import uuid
from decimal import Decimal

import pytest

from bpx_worker.arazzo import HttpRequest
from bpx_worker.config import settings
from bpx_worker.errors import RejectedError, TransientError
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.withdrawal.runtime import run_withdrawal_inprocess


def _inputs(quantity="12.5", symbol="USDC"):
    return {"symbol": symbol, "blockchain": "Solana", "address": f"Addr{uuid.uuid4().hex[:10]}", "quantity": quantity}


def test_worker_workflow_returns_outputs_and_records_one_withdrawal(stack, sandbox):
    inputs, key = _inputs(), uuid.uuid4().hex
    result = run_withdrawal_inprocess(settings.get(), inputs, key)
    assert result.state == "succeeded", result.error
    assert result.outputs["status"] == "confirmed"
    assert isinstance(result.outputs["withdrawalId"], int)
    mine = sandbox.withdrawals(f"wd-{key}")
    assert len(mine) == 1
    assert (mine[0]["id"], mine[0]["symbol"], Decimal(mine[0]["quantity"]), mine[0]["toAddress"]) == (
        result.outputs["withdrawalId"], "USDC", Decimal("12.5"), inputs["address"])
    assert result.steps["reconcileWithdrawal"].polls >= 1


def test_seed_document_as_published_still_runs(stack, sandbox):
    sandbox.configure(history_lag=0)
    inputs = _inputs("1")
    result = run_withdrawal_inprocess(settings.get(), inputs, uuid.uuid4().hex, seed_only=True)
    assert result.state == "succeeded", result.error
    assert isinstance(result.outputs["withdrawalId"], int)
    assert result.outputs["status"] in ("pending", "confirmed")
    assert [w["toAddress"] for w in sandbox.withdrawals()].count(inputs["address"]) == 1


def test_reconcile_never_reads_another_withdrawal_when_the_exchange_ignores_the_id_filter(stack, sandbox):
    """The seed document takes `$response.body#/0` on trust: an ignored filter must not hand it someone else's."""
    sandbox.configure(history_lag=0)
    earlier = run_withdrawal_inprocess(settings.get(), _inputs("1"), uuid.uuid4().hex, seed_only=True)
    assert earlier.state == "succeeded", earlier.error
    # Ours stays out of the history while the earlier one is in it: an unfiltered answer starts with the earlier one.
    sandbox.configure(history_lag=30, ignore_filters=True)
    try:
        result = run_withdrawal_inprocess(settings.get(), _inputs("1"), uuid.uuid4().hex, seed_only=True)
    finally:
        sandbox.configure(ignore_filters=False)
    reconciled = result.steps["reconcileWithdrawal"].outputs
    assert reconciled["reconciledId"] in (None, result.outputs["withdrawalId"])
    assert reconciled["reconciledId"] != earlier.outputs["withdrawalId"]


def test_balance_check_stops_before_any_withdrawal(stack, sandbox):
    before = len(sandbox.withdrawals())
    result = run_withdrawal_inprocess(settings.get(), _inputs("51", "SOL"), uuid.uuid4().hex)
    assert result.state == "failed"
    assert result.error.step == "getBalances" and result.error.code == "INSUFFICIENT_FUNDS"
    assert len(sandbox.withdrawals()) == before


def _client(stack):
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    return BackpackClient(stack.sandbox_url, signer)


def test_insufficient_funds_is_a_rejection_carrying_the_code(stack, sandbox):
    body = {"symbol": "SOL", "blockchain": "Solana", "address": "Addr", "quantity": "5000"}
    with pytest.raises(RejectedError) as caught:
        _client(stack).send(HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body=body))
    assert caught.value.code == "INSUFFICIENT_FUNDS" and caught.value.status == 400


def test_wrong_key_is_refused_by_the_sandbox(stack, sandbox):
    stranger, _ = Signer.generate()
    with pytest.raises(RejectedError) as caught:
        BackpackClient(stack.sandbox_url, stranger).send(HttpRequest("GET", "/api/v1/capital", "balanceQuery"))
    assert caught.value.code == "INVALID_CLIENT_REQUEST"


def test_expired_timestamp_is_refused_by_the_sandbox(stack, sandbox):
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text(), clock=lambda: 1_000_000_000.0)
    with pytest.raises(RejectedError) as caught:
        BackpackClient(stack.sandbox_url, signer).send(HttpRequest("GET", "/api/v1/capital", "balanceQuery"))
    assert caught.value.code == "INVALID_CLIENT_REQUEST"
    assert "expired" in caught.value.message.lower()


def test_connection_refused_is_transient():
    from devtools.local import free_port

    signer, _ = Signer.generate()
    with pytest.raises(TransientError):
        BackpackClient(f"http://127.0.0.1:{free_port()}", signer).send(
            HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body={"a": "b"}))
