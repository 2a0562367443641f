"""The withdrawal request is at most once, and every step is safe to run twice.

These drive the step engine step by step against the real Redis and the
sandbox over HTTP, so each failure lands exactly where the test puts it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from bpx_worker.config import settings
from bpx_worker.errors import LeaseExpiring, LeaseLost
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.interfaces.api import submit_withdrawal, wait_for
from bpx_worker.jobs.record import Attempt, AttemptState, StepRecord
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.withdrawal.runtime import build_engine
from devtools.local import wait_until
from tests.addresses import solana_address

REQUEST = "requestWithdrawal"


@pytest.fixture
def runner(stack, store):
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=1.0)
    yield build_engine(settings.get(), store, client, signer)
    client.close()


def _job(store, quantity="3") -> str:
    """A job record only: no Celery chain, so the test runs each step itself."""
    key = uuid.uuid4().hex
    client_id = withdrawal.client_id(key)
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": f"Addr{key[:10]}", "quantity": quantity,
              "clientId": client_id}
    job_id, _ = store.create(key, client_id, inputs)
    return job_id


def _request(store, job_id):
    return store.require(job_id).steps[REQUEST]


def test_lost_response_after_commit_is_found_by_client_id_not_resent(runner, store, sandbox):
    job_id = _job(store)
    assert runner.run(job_id, "getBalances").action == "continue"
    sandbox.faults(p_commit_then_drop=1.0)
    first = runner.run(job_id, "requestWithdrawal")
    sandbox.faults(p_commit_then_drop=0)
    assert first.action == "retry"
    record = store.require(job_id)
    assert [a.state for a in record.steps[REQUEST].attempts] == ["ambiguous"]
    client_id = record.client_id
    assert len(sandbox.withdrawals(client_id)) == 1  # the exchange did record it

    # Later runs look it up (the history lags) and never send again.
    outcome = wait_until(lambda: runner.run(job_id, "requestWithdrawal").action == "continue" or None, 10,
                         "the lookup to find the withdrawal", interval=0.1)
    assert outcome
    step = _request(store, job_id)
    assert step.found_by_lookup is True
    assert step.outputs["withdrawalId"] == sandbox.withdrawals(client_id)[0]["id"]
    assert len(step.attempts) == 1
    assert len(sandbox.withdrawals(client_id)) == 1


def test_ambiguous_5xx_never_found_ends_needs_review_and_is_never_resent(runner, store, sandbox):
    job_id = _job(store)
    runner.run(job_id, "getBalances")
    sandbox.faults(p_5xx=1.0)
    assert runner.run(job_id, "requestWithdrawal").action == "retry"
    sandbox.faults(p_5xx=0)
    before = sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"]
    final = wait_until(lambda: (n := runner.run(job_id, "requestWithdrawal")).action == "stop" and n, 60,
                       "the lookup deadline", interval=0.2)
    assert final.state == "needs_review"
    record = store.require(job_id)
    assert record.state == "needs_review"
    assert record.error.code == "OUTCOME_UNKNOWN"
    assert record.error.client_id == record.client_id
    assert record.error.attempts[0].state == "ambiguous"
    assert sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"] == before  # never re-sent
    assert sandbox.withdrawals(record.client_id) == []


@pytest.mark.parametrize("left_behind", ["sending", "accepted"])
def test_an_attempt_left_behind_by_a_crash_is_looked_up_not_resent(runner, store, sandbox, left_behind):
    job_id = _job(store)
    runner.run(job_id, "getBalances")
    lease = store.acquire(job_id, 5)

    def crashed(r):
        r.steps[REQUEST] = StepRecord(started_at=time.time(), runs=1, attempts=[
            Attempt(n=1, state=AttemptState(left_behind), at=time.time())])

    store.update(lease, crashed)
    store.release(lease)  # as if the worker died right after recording the attempt
    before = sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"]
    outcome = runner.run(job_id, REQUEST)
    assert sandbox.ledger()["requests"]["POST /wapi/v1/capital/withdrawals"] == before
    assert _request(store, job_id).lookups == 1
    assert outcome.action == "retry"  # not found (yet): looked up again later, never re-sent


def test_429_on_the_request_is_retried_because_it_was_not_processed(runner, store, sandbox):
    job_id = _job(store)
    runner.run(job_id, "getBalances")
    sandbox.faults(p_429=1.0)
    outcome = runner.run(job_id, "requestWithdrawal")
    sandbox.faults(p_429=0)
    assert outcome.action == "retry" and outcome.countdown >= 1  # honours Retry-After: 1
    assert _request(store, job_id).attempts[0].state == "not_sent"
    assert runner.run(job_id, "requestWithdrawal").action == "continue"
    record = store.require(job_id)
    assert [a.state for a in record.steps[REQUEST].attempts] == ["not_sent", "accepted"]
    assert len(sandbox.withdrawals(record.client_id)) == 1


def test_a_step_already_recorded_is_skipped(runner, store, sandbox):
    job_id = _job(store)
    runner.run(job_id, "getBalances")
    runner.run(job_id, "requestWithdrawal")
    before = sandbox.ledger()["requests"]
    assert runner.run(job_id, "requestWithdrawal").action == "continue"
    assert runner.run(job_id, "getBalances").action == "continue"
    assert sandbox.ledger()["requests"] == before  # nothing sent at all


def test_a_held_lease_makes_a_second_copy_wait(runner, store, sandbox):
    job_id = _job(store)
    lease = store.acquire(job_id, 5)
    outcome = runner.run(job_id, "getBalances")
    assert outcome.action == "retry" and 0 < outcome.countdown <= 5.5
    assert "getBalances" not in store.require(job_id).steps
    store.release(lease)


def test_a_run_whose_lease_expired_cannot_write(store):
    job_id = _job(store)
    stale = store.acquire(job_id, 0.2)
    wait_until(lambda: store.lease_ttl(job_id) == 0, 5, "the lease to expire")
    fresh = store.acquire(job_id, 5)
    assert fresh.token > stale.token
    with pytest.raises(LeaseLost):
        store.update(stale, lambda r: setattr(r, "state", "failed"))
    store.update(fresh, lambda r: setattr(r, "current_step", "getBalances"))
    assert store.require(job_id).state == "queued"
    store.release(fresh)


def test_duplicated_chains_still_make_one_withdrawal(stack, sandbox, store):
    from bpx_worker.tasks.withdrawal import workflow_chain

    job_id = submit_withdrawal("USDC", "Solana", solana_address(), "4")
    for _ in range(3):
        workflow_chain(job_id).apply_async()  # as if the messages were delivered four times
    record = wait_for(job_id, timeout=60)
    assert record.state == "succeeded"
    assert len(sandbox.withdrawals(record.client_id)) == 1
    assert len(record.steps[REQUEST].attempts) == 1


def test_a_failed_lookup_is_not_taken_for_not_found(runner, store, sandbox):
    job_id = _job(store)
    runner.run(job_id, "getBalances")
    sandbox.faults(p_commit_then_drop=1.0)
    runner.run(job_id, "requestWithdrawal")  # recorded by the exchange, answer lost
    lease = store.acquire(job_id, 5)
    store.update(lease, lambda r: setattr(r.steps[REQUEST].attempts[0], "at", time.time() - 3600))  # long past
    store.release(lease)
    sandbox.faults(p_commit_then_drop=0, p_5xx=1.0)  # every lookup now fails
    outcome = runner.run(job_id, "requestWithdrawal")
    assert outcome.action == "retry"  # past the deadline, but a failed lookup proves nothing
    assert _request(store, job_id).failed_lookups == 1
    sandbox.faults(p_5xx=0)
    client_id = store.require(job_id).client_id
    wait_until(lambda: sandbox.withdrawals(client_id)[0]["visibleInHistory"], 5, "the history lag to pass")
    assert runner.run(job_id, "requestWithdrawal").action == "continue"
    record = store.require(job_id)
    assert record.steps[REQUEST].found_by_lookup is True
    assert len(sandbox.withdrawals(record.client_id)) == 1


def test_a_taken_lease_writes_through_its_own_copy_and_a_stale_copy_cannot_write(store):
    job_id = _job(store)
    stale = store.take(job_id, 0.2)
    assert stale.lease is not None and stale.record.job_id == job_id
    wait_until(lambda: store.lease_ttl(job_id) == 0, 5, "the lease to expire")
    fresh = store.take(job_id, 5)
    assert fresh.lease.token > stale.lease.token
    store.update(fresh.lease, lambda r: setattr(r, "current_step", "getBalances"))
    with pytest.raises(LeaseLost):
        store.update(stale.lease, lambda r: setattr(r, "state", "failed"))
    assert store.require(job_id).current_step == "getBalances" and store.require(job_id).state == "queued"
    held = store.take(job_id, 5)
    assert held.lease is None and 0 < held.wait <= 5
    store.release(fresh.lease)
    store.release(stale.lease)


def test_the_sending_mark_is_refused_when_the_lease_would_run_out_before_the_request(store):
    job_id = _job(store)
    lease = store.take(job_id, 1.0).lease
    with pytest.raises(LeaseExpiring):
        store.update(lease, lambda r: setattr(r, "current_step", REQUEST), lease_left=5.0)
    assert store.require(job_id).current_step is None  # nothing written
    store.update(lease, lambda r: setattr(r, "current_step", REQUEST), lease_left=0.5)
    assert store.require(job_id).current_step == REQUEST
    store.release(lease)


def test_a_withdrawal_is_not_sent_on_a_lease_too_short_for_the_request(stack, runner, store, sandbox):
    import dataclasses

    job_id = _job(store)
    assert runner.run(job_id, "getBalances").action == "continue"
    short = dataclasses.replace(runner.timing, lease_ttl=2.0, send_budget=5.0)
    engine = build_engine(settings.get(), store, runner.client, None)
    engine.timing = short
    engine.open_sealed = runner.open_sealed
    before = len(sandbox.withdrawals())
    outcome = engine.run(job_id, REQUEST)
    assert outcome.action == "retry"
    assert len(sandbox.withdrawals()) == before
    entry = store.require(job_id).steps.get(REQUEST)
    assert entry is None or entry.attempts == []  # no attempt recorded: nothing may have left
    assert runner.run(job_id, REQUEST).action == "continue"  # a run with a long enough lease sends it
    assert len(sandbox.withdrawals()) == before + 1


def test_a_withdrawal_held_back_by_the_rate_limit_leaves_no_sending_mark(stack, runner, store, sandbox):
    from bpx_worker.exchange.ratelimit import Limit, RedisRateLimiter

    job_id = _job(store)
    assert runner.run(job_id, "getBalances").action == "continue"
    # One request a minute, no waiting in a slot: the first request takes the only turn, the next is refused.
    limiter = RedisRateLimiter(store.redis, Limit(per_second=1 / 60, max_wait=0), name=f"test-{uuid.uuid4().hex}")
    limiter.acquire()
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=1.0, limiter=limiter)
    engine = build_engine(settings.get(), store, client, signer)
    before = len(sandbox.withdrawals())
    outcome = engine.run(job_id, REQUEST)
    client.close()
    assert outcome.action == "retry" and outcome.countdown > 0
    assert len(sandbox.withdrawals()) == before
    entry = store.require(job_id).steps.get(REQUEST)
    assert entry is None or entry.attempts == []  # not marked sending: a worker dying here leaves nothing to review
