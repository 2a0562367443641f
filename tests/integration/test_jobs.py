"""The withdrawal as chained Celery tasks: a real worker process, real Redis, the sandbox over HTTP."""

import uuid
from decimal import Decimal

import pytest

from bpx_worker.interfaces.api import get_job, submit_withdrawal, wait_for
from tests.addresses import solana_address


class _Decimal:
    def __eq__(self, other):
        return isinstance(other, str) and Decimal(other) >= 0


ANY_DECIMAL = _Decimal()


def _submit(quantity="10", symbol="USDC", **kwargs):
    address = solana_address()
    return submit_withdrawal(symbol, "Solana", address, quantity, **kwargs), address


def test_happy_path_records_all_three_steps(stack, sandbox):
    job_id, address = _submit("10.25")
    record = wait_for(job_id, timeout=60)
    assert record.state == "succeeded", record.error
    assert record.outputs["status"] == "confirmed"
    withdrawal_id = record.outputs["withdrawalId"]
    steps = record.steps
    assert set(steps) == {"getBalances", "requestWithdrawal", "reconcileWithdrawal"}
    assert all(s.state == "done" and s.status_code == 200 for s in steps.values())
    # Only the checked symbol's available balance is kept, not the account's balance sheet.
    assert steps["getBalances"].outputs == {"balances": {"USDC": {"available": ANY_DECIMAL}}}
    assert steps["requestWithdrawal"].outputs["withdrawalId"] == withdrawal_id
    assert steps["reconcileWithdrawal"].outputs == {"reconciledStatus": "confirmed", "reconciledId": withdrawal_id}
    mine = sandbox.withdrawals(record.client_id)
    assert len(mine) == 1
    assert (mine[0]["id"], Decimal(mine[0]["quantity"]), mine[0]["toAddress"]) == (
        withdrawal_id, Decimal("10.25"), address)


def test_insufficient_balance_fails_at_get_balances_and_sends_nothing(stack, sandbox):
    job_id, _ = _submit("50.0001", symbol="SOL")
    record = wait_for(job_id, timeout=60)
    assert record.state == "failed"
    assert record.error.step == "getBalances"
    assert record.error.code == "INSUFFICIENT_FUNDS"
    assert "requestWithdrawal" not in record.steps
    assert sandbox.withdrawals(record.client_id) == []


def test_history_lag_longer_than_first_poll_delay_polls_again(stack, sandbox):
    sandbox.configure(history_lag=1.5)
    before = sandbox.ledger()["requests"]["GET /wapi/v1/capital/withdrawals"]
    job_id, _ = _submit("1")
    record = wait_for(job_id, timeout=60)
    assert record.state == "succeeded", record.error
    assert record.steps["reconcileWithdrawal"].polls >= 2
    after = sandbox.ledger()["requests"]["GET /wapi/v1/capital/withdrawals"]
    assert after - before >= 2


def test_withdrawal_pending_past_the_deadline_needs_review(stack, sandbox):
    sandbox.configure(hold_status="pending")
    job_id, _ = _submit("1")
    record = wait_for(job_id, timeout=60)
    assert record.state == "needs_review"
    assert record.error.code == "RECONCILE_DEADLINE"
    assert record.steps["reconcileWithdrawal"].last_seen_status == "pending"
    assert len(sandbox.withdrawals(record.client_id)) == 1


def test_status_needing_a_human_ends_needs_review(stack, sandbox):
    sandbox.configure(hold_status="ownershipVerificationRequired")
    record = wait_for(_submit("1")[0], timeout=60)
    assert record.state == "needs_review"
    assert record.error.code == "STATUS_NEEDS_REVIEW"


def test_same_idempotency_key_is_one_job_and_one_withdrawal(stack, sandbox):
    key = f"k-{uuid.uuid4().hex}"
    first, address = _submit("2", idempotency_key=key)
    second = submit_withdrawal("USDC", "Solana", address, "2", idempotency_key=key)
    assert first == second
    record = wait_for(first, timeout=60)
    third = submit_withdrawal("USDC", "Solana", address, "2", idempotency_key=key)
    assert third == first
    assert record.state == "succeeded"
    assert len(sandbox.withdrawals(record.client_id)) == 1


def test_exchange_rejection_at_request_withdrawal_fails_with_its_code(stack, sandbox):
    sandbox.configure(reject_code="INVALID_CLIENT_REQUEST")
    try:
        record = wait_for(_submit("1")[0], timeout=60)
    finally:
        sandbox.configure(reject_code=None)
    assert record.state == "failed"
    assert record.error.step == "requestWithdrawal"
    assert record.error.code == "INVALID_CLIENT_REQUEST"
    assert sandbox.withdrawals(record.client_id) == []


def test_unknown_job_is_a_clear_error(stack):
    from bpx_worker.errors import JobError

    with pytest.raises(JobError, match="no job"):
        get_job("nope")


def test_sweep_redispatches_a_job_whose_messages_were_lost(stack, sandbox, store):
    import time

    from bpx_worker.jobs.store import ACTIVE_INDEX, job_key
    from bpx_worker.tasks.withdrawal import sweep
    from bpx_worker.withdrawal import rules as withdrawal

    key = uuid.uuid4().hex
    client_id = withdrawal.client_id(key)
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": "SweptAddr", "quantity": "1", "clientId": client_id}
    job_id, _ = store.create(key, client_id, inputs)
    # No chain was ever sent (as if the submitter died right after writing the record),
    # and nothing has happened for longer than STALL_AFTER.
    record = store.require(job_id)
    record.updated_at = time.time() - 10_000
    store.redis.set(job_key(job_id), record.to_json())
    store.redis.zadd(ACTIVE_INDEX, {job_id: record.updated_at})
    sweep.delay()
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert len(sandbox.withdrawals(client_id)) == 1


def test_cli_status_and_watch_show_the_job(stack, sandbox):
    import json
    import subprocess
    import sys

    job_id, _ = _submit("1")
    watched = subprocess.run([sys.executable, "-m", "bpx_worker.interfaces.cli", "watch", job_id], env=stack.env(),
                             capture_output=True, text=True, timeout=90)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    for step in ("getBalances", "requestWithdrawal", "reconcileWithdrawal"):
        assert step in watched.stdout
    assert "succeeded" in watched.stdout
    cli = [sys.executable, "-m", "bpx_worker.interfaces.cli"]
    status = subprocess.run([*cli, "status", job_id, "--json"], env=stack.env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0
    assert json.loads(status.stdout)["outputs"]["status"] == "confirmed"
    missing = subprocess.run([*cli, "status", "no-such-job"], env=stack.env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 4
