"""Reads many jobs share: one history read polls many pending withdrawals, each judged by its own status;
identical balance reads within the freshness window go once; polls yield to fresh work under the rate limit.

These drive the step engine against the real Redis and the sandbox over HTTP (no Celery chain is sent for
these jobs, so the test runs each step itself and counts every request the sandbox received).
"""

from __future__ import annotations

import threading
import uuid

import pytest
import requests

from bpx_worker.config import settings
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.ratelimit import Limit, RedisRateLimiter
from bpx_worker.exchange.shared import PREFIX as SHARED_READ_PREFIX
from bpx_worker.exchange.signer import Signer
from bpx_worker.jobs.record import ErrorCode, JobState
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.withdrawal.runtime import build_engine
from devtools.local import wait_until

BALANCES, REQUEST, RECONCILE = "getBalances", "requestWithdrawal", "reconcileWithdrawal"
HISTORY_READS = "GET /wapi/v1/capital/withdrawals"
BALANCE_READS = "GET /api/v1/capital"


@pytest.fixture
def signer(stack) -> Signer:
    return Signer.from_secret(stack.api_key, stack.secret_file.read_text())


@pytest.fixture
def runner(stack, store, signer):
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=2.0)
    yield build_engine(settings.get(), store, client, signer)
    client.close()


@pytest.fixture(autouse=True)
def no_shared_answers_left(store):
    """A balance answer kept by one test must not answer another's read after the test changed the balances."""
    yield
    for key in store.redis.scan_iter(f"{SHARED_READ_PREFIX}*"):
        store.redis.delete(key)


def _count(sandbox, route: str) -> int:
    return int(sandbox.ledger()["requests"].get(route, 0))


def _requested(runner, store, count: int) -> list[str]:
    """Jobs whose withdrawal the exchange has: the first two steps run, the reconcile step not yet."""
    jobs = []
    for _ in range(count):
        key = uuid.uuid4().hex
        client_id = withdrawal.client_id(key)
        inputs = {"symbol": "USDC", "blockchain": "Solana", "address": f"Addr{key[:10]}", "quantity": "1",
                  "clientId": client_id}
        job_id, _ = store.create(key, client_id, inputs)
        assert runner.run(job_id, BALANCES).action == "continue"
        assert runner.run(job_id, REQUEST).action == "continue"
        jobs.append(job_id)
    return jobs


def _hold(stack, store, job_id: str, status: str | None) -> None:
    wid = store.require(job_id).steps[REQUEST].outputs["withdrawalId"]
    requests.post(f"{stack.sandbox_url}/_sandbox/withdrawals/{wid}", json={"hold_status": status},
                  timeout=5).raise_for_status()


def test_one_history_read_polls_many_pending_withdrawals_each_judged_by_its_own_status(stack, runner, store,
                                                                                        sandbox):
    sandbox.configure(hold_status="pending", history_lag=0, confirm_delay=0)
    jobs = _requested(runner, store, 6)
    settled, to_review, pending = jobs[0], jobs[1], jobs[2:]
    _hold(stack, store, settled, None)  # confirmed now
    _hold(stack, store, to_review, "recipientInformationRequired")
    before = _count(sandbox, HISTORY_READS)

    outcomes = runner.run_polls(jobs, RECONCILE)

    assert _count(sandbox, HISTORY_READS) - before == 1  # one read for six jobs
    record = store.require(settled)
    assert record.state == JobState.SUCCEEDED and outcomes[settled].action == "stop"
    assert record.outputs == {"withdrawalId": record.steps[REQUEST].outputs["withdrawalId"], "status": "confirmed"}
    review = store.require(to_review)
    assert review.state == JobState.NEEDS_REVIEW and review.error is not None
    assert review.error.code == ErrorCode.STATUS_NEEDS_REVIEW
    for job_id in pending:
        entry = store.require(job_id).steps[RECONCILE]
        assert outcomes[job_id].action == "retry" and outcomes[job_id].poll
        assert entry.polls == 1 and entry.last_seen_status == "pending"

    # The next round: the rest settle, again with one read.
    for job_id in pending:
        _hold(stack, store, job_id, None)
    before = _count(sandbox, HISTORY_READS)
    outcomes = runner.run_polls(pending, RECONCILE)
    assert _count(sandbox, HISTORY_READS) - before == 1
    assert all(store.require(job_id).state == JobState.SUCCEEDED for job_id in pending)
    # A job already ended is left as it is: no read is made for it.
    before = _count(sandbox, HISTORY_READS)
    assert {o.action for o in runner.run_polls(jobs, RECONCILE).values()} == {"stop"}
    assert _count(sandbox, HISTORY_READS) == before


def test_a_withdrawal_not_listed_yet_is_not_yet_for_its_job_alone(stack, runner, store, sandbox):
    sandbox.configure(hold_status=None, history_lag=0, confirm_delay=0)
    listed = _requested(runner, store, 2)
    sandbox.configure(history_lag=600)  # the exchange has the next one but does not list it yet
    lagging = _requested(runner, store, 1)[0]
    outcomes = runner.run_polls([*listed, lagging], RECONCILE)
    assert all(store.require(job_id).state == JobState.SUCCEEDED for job_id in listed)
    assert outcomes[lagging].action == "retry" and outcomes[lagging].poll
    assert store.require(lagging).steps[RECONCILE].polls == 1


def test_a_round_held_back_by_the_rate_limit_writes_nothing_and_counts_no_poll(stack, store, sandbox, signer):
    sandbox.configure(hold_status="pending", history_lag=0)
    unlimited = BackpackClient(stack.sandbox_url, signer, read_timeout=2.0)
    jobs = _requested(build_engine(settings.get(), store, unlimited, signer), store, 3)
    unlimited.close()
    # A fresh withdrawal waits for the only slot of the next minute: the poll round may not take it.
    limiter = RedisRateLimiter(store.redis, Limit(per_second=1 / 60, max_wait=120), name=f"test-{uuid.uuid4().hex}",
                               sleep=lambda _: None)
    limiter.acquire()
    limiter.acquire()
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=2.0, limiter=limiter)
    engine = build_engine(settings.get(), store, client, signer)
    before = _count(sandbox, HISTORY_READS), [store.require(job_id).updated_at for job_id in jobs]

    outcomes = engine.run_polls(jobs, RECONCILE)
    client.close()

    assert all(o.action == "retry" and o.poll and o.countdown > 0 for o in outcomes.values())
    assert (_count(sandbox, HISTORY_READS), [store.require(job_id).updated_at for job_id in jobs]) == before
    assert all(RECONCILE not in store.require(job_id).steps for job_id in jobs)


def test_identical_balance_reads_made_at_once_are_sent_once(stack, store, sandbox, signer):
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=2.0)
    # A window longer than the test, so the assertion does not depend on how fast the machine is.
    engine = build_engine(settings.get().model_copy(update={"shared_read_seconds": 60}), store, client, signer)
    jobs = []
    for _ in range(8):
        key = uuid.uuid4().hex
        cid = withdrawal.client_id(key)
        jobs.append(store.create(key, cid, {"symbol": "USDC", "blockchain": "Solana", "address": f"A{key[:9]}",
                                            "quantity": "1", "clientId": cid})[0])
    before = _count(sandbox, BALANCE_READS)
    start = threading.Barrier(len(jobs))
    outcomes: dict[str, str] = {}

    def check(job_id: str) -> None:
        start.wait()
        outcomes[job_id] = engine.run(job_id, BALANCES).action

    threads = [threading.Thread(target=check, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert set(outcomes.values()) == {"continue"}
    assert _count(sandbox, BALANCE_READS) - before == 1
    # Each job judged the shared answer by its own rule and kept its own symbol's balance.
    assert all(store.require(j).steps[BALANCES].outputs["balances"]["USDC"]["available"] for j in jobs)


def test_a_balance_change_is_seen_once_the_window_has_passed(stack, store, sandbox, signer):
    client = BackpackClient(stack.sandbox_url, signer, read_timeout=2.0)
    engine = build_engine(settings.get().model_copy(update={"shared_read_seconds": 0.3}), store, client, signer)

    def job() -> str:
        key = uuid.uuid4().hex
        cid = withdrawal.client_id(key)
        return store.create(key, cid, {"symbol": "SOL", "blockchain": "Solana", "address": f"A{key[:9]}",
                                       "quantity": "1", "clientId": cid})[0]

    held = {symbol: balance["available"] for symbol, balance in sandbox.ledger()["balances"].items()}
    sandbox.balances(**{**held, "SOL": "5"})  # (the sandbox replaces the whole balance sheet)
    try:
        assert engine.run(job(), BALANCES).action == "continue"  # its answer is kept for the window
        sandbox.balances(**{**held, "SOL": "0"})
        wait_until(lambda: not list(store.redis.scan_iter(f"{SHARED_READ_PREFIX}*")), 10, "the window to pass")
        late = job()
        assert engine.run(late, BALANCES).action == "stop"
        assert store.require(late).error.code == ErrorCode.INSUFFICIENT_FUNDS
    finally:
        client.close()
        sandbox.balances(**held)
