"""Where the money moves, the worker decides for itself: limits, lookups that must match, tokens that open.

Each test drives the step engine against the real Redis job store and the
sandbox over HTTP, so each case lands exactly where the test puts it.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from bpx_worker.arazzo import HttpRequest
from bpx_worker.config import settings
from bpx_worker.exchange import twofactor
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.jobs.store import sealed_2fa_key
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.withdrawal.runtime import build_engine

POSTS = "POST /wapi/v1/capital/withdrawals"


@pytest.fixture
def signer(stack):
    return Signer.from_secret(stack.api_key, stack.secret_file.read_text())


@pytest.fixture
def client(stack, signer):
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=1.0)
    yield client
    client.close()


def _job(store, quantity="3", address=None, key=None, sealed=None) -> str:
    key = key or uuid.uuid4().hex
    client_id = withdrawal.client_id(key)
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": address or f"Addr{key[:10]}",
              "quantity": quantity, "clientId": client_id}
    job_id, _ = store.create(key, client_id, inputs, sealed)
    return job_id


def _posts(sandbox) -> int:
    return sandbox.ledger()["requests"].get(POSTS, 0)


@pytest.mark.parametrize("limits, quantity, address, code", [
    ({"max_quantity": {"USDC": Decimal("100")}}, "500", "AllowedAddr", "LIMIT_EXCEEDED"),
    ({"allowed_destinations": frozenset({"Solana:AllowedAddr"})}, "5", "OutsideAddr", "DESTINATION_NOT_ALLOWED"),
])
def test_the_worker_applies_its_own_limits_to_a_job_submitted_without_them(
        store, sandbox, client, signer, limits, quantity, address, code):
    job_id = _job(store, quantity, address)  # created by a process that had no limits
    engine = build_engine(settings.get().model_copy(update=limits), store, client, signer)
    before = _posts(sandbox)
    assert engine.run(job_id, "getBalances").action == "continue"
    outcome = engine.run(job_id, "requestWithdrawal")
    record = store.require(job_id)
    assert (outcome.action, record.state, record.error.code) == ("stop", "failed", code)
    assert record.steps["requestWithdrawal"].attempts == []
    assert _posts(sandbox) == before  # nothing sent


def test_a_withdrawal_found_by_client_id_that_differs_from_the_request_is_not_adopted(
        store, sandbox, client, signer):
    sandbox.configure(history_lag=0)
    key = uuid.uuid4().hex
    client_id = withdrawal.client_id(key)
    # Someone else's withdrawal carries the same clientId, for another amount and address.
    client.send(HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body={
        "symbol": "USDC", "blockchain": "Solana", "address": "TheirAddr", "quantity": "999", "clientId": client_id}))
    job_id = _job(store, "1", "MyAddr", key=key)
    engine = build_engine(settings.get(), store, client, signer)
    engine.run(job_id, "getBalances")
    sandbox.faults(p_5xx=1.0, only_withdrawals=True)  # our request's answer is lost: ambiguous
    assert engine.run(job_id, "requestWithdrawal").action == "retry"
    sandbox.faults(p_5xx=0, only_withdrawals=False)
    outcome = engine.run(job_id, "requestWithdrawal")  # the lookup finds their withdrawal
    record = store.require(job_id)
    assert (outcome.action, record.state, record.error.code) == ("stop", "needs_review", "LOOKUP_MISMATCH")
    detail = record.error.model_dump()
    assert detail["expected"]["address"] == "MyAddr" and detail["found"]["toAddress"] == "TheirAddr"
    assert detail["expected"]["quantity"] == "1" and detail["found"]["quantity"] == "999"
    assert "requestWithdrawal" not in record.outputs and record.steps["requestWithdrawal"].state == "needs_review"


def test_a_found_withdrawal_that_matches_the_request_is_adopted(
        store, sandbox, client, signer):
    sandbox.configure(history_lag=0)
    job_id = _job(store, "2.50")
    engine = build_engine(settings.get(), store, client, signer)
    engine.run(job_id, "getBalances")
    sandbox.faults(p_commit_then_drop=1.0)
    engine.run(job_id, "requestWithdrawal")
    sandbox.faults(p_commit_then_drop=0)
    assert engine.run(job_id, "requestWithdrawal").action == "continue"
    assert store.require(job_id).steps["requestWithdrawal"].found_by_lookup


def test_a_two_factor_token_that_does_not_open_fails_the_job_before_anything_is_sent(
        store, sandbox, client, signer):
    stranger, _ = Signer.generate()
    sealed = twofactor.seal("123456", stranger.api_key)  # sealed to another account's key
    job_id = _job(store, sealed=sealed)
    engine = build_engine(settings.get(), store, client, signer)
    engine.run(job_id, "getBalances")
    before = _posts(sandbox)
    outcome = engine.run(job_id, "requestWithdrawal")
    record = store.require(job_id)
    assert (outcome.action, record.state, record.error.code) == ("stop", "failed", "TWO_FACTOR_UNREADABLE")
    assert record.steps["requestWithdrawal"].attempts == []  # never marked as sending
    assert _posts(sandbox) == before
    assert not store.redis.exists(sealed_2fa_key(job_id))
