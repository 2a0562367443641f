"""Polls of pending withdrawals wait in the Redis poll schedule, not as countdown messages in a worker.

Against the real stack: the worker (default pool), the private Redis and the sandbox over HTTP.
"""

from __future__ import annotations

import time
import uuid

import requests

from bpx_worker.config.celery import POLLS_QUEUE, QUEUE
from bpx_worker.interfaces.api import submit_withdrawal, wait_for
from bpx_worker.jobs.schedule import PollSchedule
from devtools.local import wait_until

RECONCILE = "reconcileWithdrawal"


def test_claims_are_exclusive_and_a_lost_wake_comes_due_again(store):
    schedule = PollSchedule(store.redis)
    jobs = [f"claim-{uuid.uuid4().hex}" for _ in range(3)]
    now = time.time()
    for job_id in jobs:
        schedule.schedule(job_id, RECONCILE, now - 1)
    first = schedule.claim(now, limit=2, hold=0.5)
    second = schedule.claim(now, limit=10, hold=0.5)
    mine = {j for j, _, _ in first + second if j in jobs}
    assert mine == set(jobs) and not {j for j, _, _ in first} & {j for j, _, _ in second}
    assert all(step == RECONCILE and due == now - 1 for j, step, due in first + second if j in jobs)
    assert not [j for j, _, _ in schedule.claim(time.time(), limit=10, hold=0.5) if j in jobs]  # all held
    again = schedule.claim(now + 0.6, limit=10, hold=60)
    assert {j for j, _, _ in again if j in jobs} == set(jobs)  # nobody polled them: due again after the hold
    for job_id in jobs:
        schedule.cancel(job_id, RECONCILE)
        assert schedule.due_at(job_id, RECONCILE) is None


def test_a_pending_withdrawal_polls_from_the_schedule_and_leaves_it_when_settled(stack, store, sandbox):
    schedule = PollSchedule(store.redis)
    sandbox.configure(hold_status="pending")
    job_id = submit_withdrawal("USDC", "Solana", "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG", "2")
    wait_until(lambda: RECONCILE in store.get(job_id).steps and store.get(job_id).steps[RECONCILE].polls >= 3,
               30, "three polls")
    assert schedule.due_at(job_id, RECONCILE) is not None
    # No countdown message for this job anywhere in Celery's hands: not queued, not held unacked.
    held = store.redis.hvals("unacked") + store.redis.lrange(QUEUE, 0, -1) + store.redis.lrange(POLLS_QUEUE, 0, -1)
    assert not [m for m in held if job_id in m and '"eta": "' in m and RECONCILE in m]
    withdrawal = sandbox.withdrawals(store.get(job_id).client_id)[0]
    requests.post(f"{stack.sandbox_url}/_sandbox/withdrawals/{withdrawal['id']}", json={"hold_status": None},
                  timeout=5).raise_for_status()
    record = wait_for(job_id, timeout=30)
    assert record.state == "succeeded"
    # The task removes the poll right after the run that recorded the end.
    wait_until(lambda: schedule.due_at(job_id, RECONCILE) is None, 10, "the poll to leave the schedule")


def test_the_worker_polls_pending_withdrawals_in_rounds_of_one_history_read(stack, store, sandbox):
    sandbox.configure(hold_status="pending", history_lag=0)
    jobs = [submit_withdrawal("USDC", "Solana", "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG", "1")
            for _ in range(8)]

    def polls() -> int:
        return sum(r.steps[RECONCILE].polls for r in map(store.get, jobs) if RECONCILE in r.steps)

    def history_reads() -> int:
        return int(sandbox.ledger()["requests"].get("GET /wapi/v1/capital/withdrawals", 0))

    wait_until(lambda: all(RECONCILE in store.get(j).steps and store.get(j).steps[RECONCILE].polls >= 1
                           for j in jobs), 30, "every job's first poll")
    polls_before, reads_before = polls(), history_reads()
    # Within the test's reconcile deadline (RECONCILE_DEADLINE=6 s), two more polls a job.
    wait_until(lambda: polls() - polls_before >= 16, 30, "sixteen more polls")
    polls_made, reads_made = polls() - polls_before, history_reads() - reads_before
    # Alone, every poll is a read. In rounds, the jobs due together share one.
    assert reads_made * 2 <= polls_made, (reads_made, polls_made)
