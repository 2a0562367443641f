"""Chaos: nothing lost, nothing sent twice, under faults, kills and restarts.

Each scenario runs its own private stack (always a private Redis, since one
scenario restarts it) and checks the same invariants
against the sandbox's ledger. `make chaos-large` runs scenario 1 bigger:
CHAOS_JOBS (default 200) jobs and CHAOS_KILLS (default 8) worker kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from bpx_worker.jobs.record import JobRecord
from devtools.local import local_stack, wait_until
from tests.addresses import solana_address

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "200"))
CHAOS_KILLS = int(os.environ.get("CHAOS_KILLS", "8"))

# Short timings so a kill is recovered from in seconds; all are settings.
CHAOS_ENV = {
    "RETRY_INITIAL_DELAY": "0.2",
    "RETRY_MAX_DELAY": "2",
    "RETRY_MAX_ATTEMPTS": "12",
    "RECONCILE_INITIAL_DELAY": "0.3",
    "RECONCILE_BACKOFF_FACTOR": "1.5",
    "RECONCILE_MAX_DELAY": "2",
    "RECONCILE_DEADLINE": "120",
    "LOOKUP_DEADLINE": "8",
    "HTTP_READ_TIMEOUT": "1.5",
    "HTTP_CONNECT_TIMEOUT": "1",  # connect + read must fit in the soft time limit (60 % of LEASE_TTL)
    "LEASE_TTL": "6",
    "VISIBILITY_TIMEOUT": "10",
    "STALL_AFTER": "15",
    "SWEEP_INTERVAL": "3",
    "LOG_LEVEL": "WARNING",
}
START_BALANCES = {"USDC": Decimal("1000000"), "SOL": Decimal("10")}
SANDBOX_ARGS = ["--balances", "USDC=1000000,SOL=10", "--history-lag", "0.3", "--confirm-delay", "0.6"]
WORKERS = ("w1", "w2")


class Supervisor(threading.Thread):
    """Restarts any worker that has exited, as a process manager (systemd, Docker) would."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack = stack
        self.lock = threading.Lock()  # held by whoever stops or starts a worker
        self.restarts = 0
        self.stopping = threading.Event()

    def start(self) -> None:
        for name in (*WORKERS, "beat"):
            self.start_process(name)
        super().start()

    def start_process(self, name: str) -> None:
        if name == "beat":
            self.stack.start_beat(**CHAOS_ENV)
        else:
            self.stack.start_worker(name, **CHAOS_ENV)  # the default pool and concurrency (threads)

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            with self.lock:
                for name in (*WORKERS, "beat"):
                    process = self.stack.processes.get(name)
                    if process is None or process.poll() is not None:
                        self.start_process(name)
                        self.restarts += 1


@pytest.fixture
def chaos_stack():
    with local_stack(sandbox_args=SANDBOX_ARGS, start_worker=False) as stack, stack.activated(**CHAOS_ENV):
        supervisor = Supervisor(stack)
        supervisor.start()
        stack.supervisor = supervisor
        try:
            yield stack
        finally:
            supervisor.stopping.set()
            supervisor.join()


def _submit(n: int, symbol: str = "USDC", quantity: str | None = None) -> list[str]:
    from bpx_worker.interfaces.api import submit_withdrawal

    rng = random.Random(n)
    jobs = []
    for i in range(n):
        amount = quantity or f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d}"
        jobs.append(submit_withdrawal(symbol, "Solana", solana_address(f"chaos-{i}"), amount,
                                      idempotency_key=f"chaos-{uuid.uuid4().hex}"))
    return jobs


def _records(job_ids: list[str]) -> dict[str, JobRecord | None]:
    from bpx_worker.tasks.app import job_store

    store = job_store()
    return {job_id: store.get(job_id) for job_id in job_ids}


def _await_terminal(job_ids: list[str], timeout: float) -> dict[str, JobRecord]:
    def all_done() -> dict[str, JobRecord] | None:
        records = _records(job_ids)
        ended = {job_id: r for job_id, r in records.items() if r is not None and r.terminal}
        return ended if len(ended) == len(job_ids) else None

    try:
        return wait_until(all_done, timeout, f"{len(job_ids)} jobs to end", interval=0.5)
    except TimeoutError:
        records = _records(job_ids)
        stuck = [r for r in records.values() if r and r.state not in ("succeeded", "failed", "needs_review")]
        for r in stuck[:5]:
            print("STUCK", json.dumps(r.model_dump(mode="json", include={"job_id", "state", "current_step",
                                                                         "updated_at", "steps"})))
        states = Counter(r.state if r else "missing" for r in records.values())
        raise AssertionError(f"jobs not all terminal after {timeout:g}s: {dict(states)}") from None


def _check_invariants(stack, job_ids: list[str], records: dict[str, JobRecord], title: str, **figures) -> dict:
    ledger = requests.get(stack.sandbox_url + "/_sandbox/ledger", timeout=10).json()
    withdrawals = ledger["withdrawals"]
    by_client = Counter(w["clientId"] for w in withdrawals)
    clients = {r.client_id: job_id for job_id, r in records.items() if r}

    missing = [j for j in job_ids if records.get(j) is None]
    not_terminal = [j for j, r in records.items() if r and r.state not in ("succeeded", "failed", "needs_review")]
    duplicates = {c: n for c, n in by_client.items() if n > 1}
    orphans = [w for w in withdrawals if w["clientId"] not in clients]
    states = Counter(r.state.value for r in records.values())
    reached_review = sum(1 for r in records.values() if r.state == "needs_review" and by_client[r.client_id])
    review_codes = dict(Counter(r.error.code for r in records.values() if r.state == "needs_review" and r.error))

    problems = []
    for job_id, r in records.items():
        n = by_client[r.client_id]
        if r.state == "succeeded":
            mine = [w for w in withdrawals if w["clientId"] == r.client_id]
            if n != 1 or mine[0]["id"] != r.outputs["withdrawalId"]:
                problems.append(f"succeeded job {job_id} has {n} withdrawals")
            elif Decimal(mine[0]["quantity"]) != Decimal(r.inputs["quantity"]):
                problems.append(f"job {job_id}: quantity {mine[0]['quantity']} != {r.inputs['quantity']}")
        elif r.state == "failed" and n != 0:
            problems.append(f"failed job {job_id} has {n} withdrawals")
    debited = {sym: START_BALANCES[sym] - Decimal(ledger["balances"].get(sym, {}).get("available", "0"))
               for sym in START_BALANCES}
    withdrawn = {sym: sum((Decimal(w["quantity"]) for w in withdrawals if w["symbol"] == sym), Decimal(0))
                 for sym in START_BALANCES}
    overdrawn = [sym for sym in START_BALANCES if Decimal(ledger["balances"].get(sym, {}).get("available", "0")) < 0]

    print(f"\n[{title}] jobs={len(job_ids)} succeeded={states['succeeded']} failed={states['failed']} "
          f"needs_review={states['needs_review']} (reached exchange: {reached_review}, codes: {review_codes}) "
          f"withdrawals={len(withdrawals)} faults_injected={ledger.get('faults_injected')} "
          + " ".join(f"{k}={v}" for k, v in figures.items())
          + f" lost={len(missing) + len(not_terminal)} duplicates={len(duplicates)} orphans={len(orphans)}")
    assert not missing, f"jobs lost: {missing[:5]}"
    assert not not_terminal, f"jobs not terminal: {not_terminal[:5]}"
    for client_id in duplicates:
        record = records[clients[client_id]]
        print("DUPLICATE", record.model_dump_json(include={"job_id", "state", "steps", "error"}),
              [w for w in withdrawals if w["clientId"] == client_id])
    assert not duplicates, f"withdrawals sent twice: {duplicates}"
    assert not orphans, f"withdrawals without a job: {orphans[:3]}"
    assert not problems, problems[:5]
    assert debited == withdrawn, f"debited {debited} != sum of withdrawals {withdrawn}"
    assert not overdrawn
    return {"states": states, "ledger": ledger}


def _pool_children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_faults_and_worker_kills_lose_nothing_and_send_nothing_twice(chaos_stack):
    stack = chaos_stack
    requests.post(stack.sandbox_url + "/_sandbox/faults", json={
        "p_5xx": 0.05, "p_429": 0.05, "latency_ms": 5, "p_drop": 0.02, "p_commit_then_drop": 0.05, "seed": 11,
    }, timeout=5).raise_for_status()
    job_ids = _submit(CHAOS_JOBS)
    rng = random.Random(5)
    kills = {"worker": 0, "pool_process": 0}
    for _ in range(CHAOS_KILLS):
        time.sleep(rng.uniform(0.5, 2.0))  # the chaos schedule: a kill at a random moment
        name = rng.choice(WORKERS)
        with stack.supervisor.lock:
            process = stack.processes[name]
            children = _pool_children(process.pid)
            if children and rng.random() < 0.5:
                os.kill(rng.choice(children), signal.SIGKILL)  # the pool replaces it; its message is requeued
                kills["pool_process"] += 1
            else:
                stack.stop_worker(name, hard=True)  # SIGKILL the whole worker; Redis redelivers its messages
                stack.supervisor.start_process(name)
                kills["worker"] += 1
    records = _await_terminal(job_ids, timeout=300)
    result = _check_invariants(stack, job_ids, records, "faults+kills", kills=kills,
                               supervisor_restarts=stack.supervisor.restarts)
    assert result["states"]["succeeded"] >= CHAOS_JOBS // 2


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restart_with_aof_mid_run_loses_nothing(chaos_stack, crash):
    stack = chaos_stack
    job_ids = _submit(100)
    wait_until(lambda: sum(r.state == "succeeded" for r in _records(job_ids).values()) >= 10, 120,
               "the first jobs to finish", interval=0.2)
    stack.redis.stop(hard=crash)  # SIGKILL, or SIGTERM; the append-only file is fsynced at every write
    time.sleep(2)  # Redis stays down for a while: that is the fault under test
    stack.redis.start()
    records = _await_terminal(job_ids, timeout=300)
    _check_invariants(stack, job_ids, records, f"redis restart ({'SIGKILL' if crash else 'SIGTERM'})", restarts=1)


def test_sandbox_down_for_several_retries_jobs_wait_then_finish(chaos_stack):
    stack = chaos_stack
    stack.stop_sandbox()
    job_ids = _submit(20)

    def retried_three_times():
        records = _records(job_ids).values()
        return all("getBalances" in r.steps and r.steps["getBalances"].transient_failures >= 3 for r in records)

    wait_until(retried_three_times, 120, "every job to retry three times", interval=0.2)
    stack.start_sandbox()
    records = _await_terminal(job_ids, timeout=180)
    result = _check_invariants(stack, job_ids, records, "sandbox down", outage_retries=">=3 each")
    assert result["states"]["succeeded"] == 20


def test_concurrent_jobs_over_the_balance_never_overdraw(chaos_stack):
    stack = chaos_stack
    job_ids = _submit(15, symbol="SOL", quantity="1")
    records = _await_terminal(job_ids, timeout=180)
    result = _check_invariants(stack, job_ids, records, "over balance")
    assert result["states"]["succeeded"] == 10
    assert result["states"]["failed"] == 5
    assert all(r.error.code == "INSUFFICIENT_FUNDS" for r in records.values() if r.state == "failed")
    assert Decimal(result["ledger"]["balances"]["SOL"]["available"]) == 0
