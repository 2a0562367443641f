"""Operators' commands against real servers: the private Redis, a Celery worker process, the sandbox over HTTP.

The commands run as subprocesses (`bpx-worker ...`) where their output and exit codes matter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bpx_worker.arazzo import HttpRequest
from bpx_worker.config import settings
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.interfaces.api import submit_withdrawal, wait_for
from bpx_worker.interfaces.common import stamp
from bpx_worker.interfaces.display import follow
from bpx_worker.jobs.record import JobState
from bpx_worker.jobs.store import fence_key
from bpx_worker.tasks.withdrawal import workflow_chain
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.withdrawal.runtime import build_engine
from devtools.local import wait_until
from tests.addresses import solana_address
from tests.integration.conftest import WORKER_ENV

REQUEST = "requestWithdrawal"
POSTS = "POST /wapi/v1/capital/withdrawals"
BPX_WORKER = str(Path(sys.executable).parent / "bpx-worker")


def cli(stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`bpx-worker ARGS` in a process of its own, pointed at the stack."""
    return subprocess.run([BPX_WORKER, *args], env=stack.env(**WORKER_ENV, COLUMNS="80"), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def unpaused(store) -> Iterator[None]:
    """Every test starts and ends with sending allowed."""
    store.resume_sending("tests", "clean slate")
    yield
    store.resume_sending("tests", "clean slate")


def _hold(sandbox, withdrawal_id: int, status: str | None) -> None:
    """Make the sandbox show this withdrawal with `status` (None: its own course, confirmed after its delay)."""
    requests.post(f"{sandbox.url}/_sandbox/withdrawals/{withdrawal_id}", json={"hold_status": status},
                  timeout=5).raise_for_status()


def _submit(quantity: str = "2", symbol: str = "USDC") -> str:
    return submit_withdrawal(symbol, "Solana", solana_address(), quantity)


def _waiting(store, job_id: str):
    record = store.require(job_id)
    step = record.steps.get(REQUEST)
    return record if step is not None and step.waiting_on == "pause" else None


def _events(store, job_id: str) -> list[dict[str, str]]:
    return [event for _, event in store.events(job_id)]


# --- the kill switch ---------------------------------------------------------------------------


def test_pause_holds_a_running_jobs_withdrawal_request_while_reads_and_polls_go_on(stack, sandbox, store, unpaused):
    # Job A has sent its withdrawal and polls it (the exchange holds it pending); then sending is paused.
    sandbox.configure(hold_status="pending")
    job_a = _submit("1")
    wait_until(lambda: (s := store.require(job_a).steps.get("reconcileWithdrawal")) and s.polls >= 1, 30,
               "job A to send its withdrawal and poll it")
    sandbox.configure(hold_status=None)
    store.pause_sending("ops", "test: hold the payouts")
    posts = sandbox.ledger()["requests"][POSTS]
    a_request = store.require(job_a).steps[REQUEST]
    polls_at_pause = store.require(job_a).steps["reconcileWithdrawal"].polls

    # Job B, submitted while paused: its balance read goes on, its withdrawal request waits.
    job_b = _submit("2")
    held = wait_until(lambda: _waiting(store, job_b), 30, "job B to wait on the pause")
    assert held.steps["getBalances"].state == "done"
    assert held.steps[REQUEST].attempts == []
    assert [e["event"] for e in _events(store, job_b)].count("waiting") == 1

    # Job A's reconciliation keeps polling during the pause, and settles.
    wait_until(lambda: store.require(job_a).steps["reconcileWithdrawal"].polls > polls_at_pause, 30,
               "job A to poll while paused")
    _hold(sandbox, a_request.outputs["withdrawalId"], None)
    assert wait_for(job_a, timeout=30).state == "succeeded"
    assert _waiting(store, job_b) is not None
    assert sandbox.ledger()["requests"][POSTS] == posts
    assert sandbox.withdrawals(held.client_id) == []

    shown = cli(stack, "status", job_b)
    assert shown.returncode == 0, shown.stderr
    assert "requestWithdrawal is held by the kill switch" in shown.stdout
    assert "paused by ops" in shown.stdout and "test: hold the payouts" in shown.stdout
    timed_out = cli(stack, "watch", job_b, "--timeout", "1")
    assert timed_out.returncode == 75
    assert "timed out after 1 s: the job is still running at requestWithdrawal" in timed_out.stdout

    resumed = cli(stack, "resume", "--reason", "test: incident over", "--by", "ops")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: the pause set at" in resumed.stdout
    done = wait_for(job_b, timeout=30)
    assert done.state == "succeeded", done.error
    assert len(sandbox.withdrawals(done.client_id)) == 1
    assert [a.state for a in done.steps[REQUEST].attempts] == ["accepted"]
    assert done.steps[REQUEST].waiting_on is None


def _batch(stack, directory: Path, name: str, rows: int) -> str:
    """`bpx-worker batch submit FILE --no-wait` of `rows` payouts; returns the batch id."""
    path = directory / f"{name}.csv"
    lines = ["key,symbol,blockchain,address,quantity"]
    lines += [f"{name}-{i},USDC,Solana,{solana_address(f'{name}-{i}')},1" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    done = cli(stack, "batch", "submit", str(path), "--namespace", f"ops-{uuid.uuid4().hex[:8]}", "--no-wait")
    assert done.returncode == 0, done.stdout + done.stderr
    accepted = re.search(r"^batch (\S+) accepted", done.stdout, re.MULTILINE)
    assert accepted is not None, done.stdout
    return accepted.group(1)


def _rows(store, batch_id: str, rows: int, condition) -> list | None:
    jobs = store.jobs(batch_id=batch_id)
    return jobs if len(jobs) == rows and all(condition(j) for j in jobs) else None


def test_pause_holds_a_batchs_withdrawal_requests_while_a_running_batchs_polls_go_on(stack, sandbox, store, unpaused,
                                                                                  tmp_path):
    # Batch A's rows have sent their withdrawals and poll them (the exchange holds them pending).
    sandbox.configure(hold_status="pending")
    batch_a = _batch(stack, tmp_path, "a", 2)
    polling = wait_until(lambda: _rows(store, batch_a, 2, lambda j: (s := j.steps.get("reconcileWithdrawal"))
                                       and s.polls >= 1), 60, "batch A's rows to poll")
    sandbox.configure(hold_status=None)
    store.pause_sending("ops", "test: hold the batches")
    posts = sandbox.ledger()["requests"][POSTS]
    polls = {j.job_id: j.steps["reconcileWithdrawal"].polls for j in polling}
    wait_until(lambda: all(store.require(j).steps["reconcileWithdrawal"].polls > n for j, n in polls.items()), 30,
               "batch A's rows to poll while paused")
    for job in polling:
        _hold(sandbox, job.steps[REQUEST].outputs["withdrawalId"], None)
    assert {wait_for(j, timeout=30).state for j in polls} == {"succeeded"}

    # Batch B, submitted while paused: every row reads the balance, none sends its withdrawal.
    batch_b = _batch(stack, tmp_path, "b", 3)
    waiting = wait_until(lambda: _rows(store, batch_b, 3, lambda j: _waiting(store, j.job_id)), 60,
                         "batch B's rows to wait on the pause")
    held = [store.require(j.job_id) for j in waiting]  # read after the condition held, not before
    assert all(j.steps["getBalances"].state == "done" and j.steps[REQUEST].attempts == [] for j in held)
    assert sandbox.ledger()["requests"][POSTS] == posts

    assert cli(stack, "resume", "--reason", "test: done").returncode == 0
    finished = [wait_for(j.job_id, timeout=60) for j in held]
    assert {r.state for r in finished} == {"succeeded"}
    assert [len(sandbox.withdrawals(r.client_id)) for r in finished] == [1, 1, 1]
    assert sandbox.ledger()["requests"][POSTS] == posts + 3


def test_the_switch_is_asked_right_before_the_attempt_is_marked_sending(stack, sandbox, store, unpaused):
    """A pause that lands after the step started (after its checks, before the mark) still holds the request."""
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    client = BackpackClient(stack.sandbox_url, signer)
    answers = iter([None, "pause"])  # the check before the step starts passes; the one before the mark holds
    runner = build_engine(settings.get(), store, client, signer, gate=lambda: next(answers, None))
    try:
        key = uuid.uuid4().hex
        cid = withdrawal.client_id(key)
        job_id, _ = store.create(key, cid, {"symbol": "USDC", "blockchain": "Solana", "address": solana_address(),
                                            "quantity": "1", "clientId": cid})
        assert runner.run(job_id, "getBalances").action == "continue"
        posts = sandbox.ledger()["requests"][POSTS]
        held = runner.run(job_id, REQUEST)
        assert (held.action, held.countdown) == ("retry", 2.0)
        step = store.require(job_id).steps[REQUEST]
        assert (step.waiting_on, step.attempts) == ("pause", [])
        assert sandbox.ledger()["requests"][POSTS] == posts
        assert runner.run(job_id, REQUEST).action == "continue"  # the gate lets it go: sent once
        assert len(sandbox.withdrawals(cid)) == 1
        assert store.require(job_id).steps[REQUEST].waiting_on is None
    finally:
        client.close()


def test_pause_and_resume_are_recorded_with_who_when_and_why(stack, store, unpaused):
    since = time.time()
    first = cli(stack, "pause", "--reason", "incident 42", "--by", "alice")
    assert first.returncode == 0, first.stderr
    assert "no worker sends a new withdrawal request until `bpx-worker resume`" in first.stdout
    again = cli(stack, "pause", "--reason", "me too", "--by", "bob")
    assert "already paused since" in again.stdout and "by alice: incident 42" in again.stdout
    assert store.sending_paused().by == "alice"
    listed = cli(stack, "jobs", "--since", "1m")
    assert "sending is paused since" in listed.stdout and "by alice: incident 42" in listed.stdout
    cli(stack, "resume", "--reason", "resolved", "--by", "carol")
    assert store.sending_paused() is None
    log = [(e["action"], e["by"], e["reason"]) for e in store.operations(since)]
    assert log == [("pause", "alice", "incident 42"), ("resume", "carol", "resolved")]
    assert cli(stack, "resume", "--reason", "twice").stdout.strip() == "sending was not paused; nothing to resume"


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_before_the_withdrawal_request_ends_the_job_and_nothing_is_ever_sent(stack, sandbox, store, unpaused):
    store.pause_sending("ops", "test: cancel while held")
    job_id = _submit("3")
    record = wait_until(lambda: _waiting(store, job_id), 30, "the job to wait on the pause")
    done = cli(stack, "cancel", job_id, "--reason", "wrong address", "--by", "bob")
    assert done.returncode == 0, done.stderr
    assert "cancelled by bob: wrong address; no withdrawal request was sent" in done.stdout
    ended = store.require(job_id)
    assert ended.state == "failed"
    assert (ended.error.code, ended.error.step, ended.error.source) == ("CANCELLED", REQUEST, "worker")
    assert ended.error.model_extra == {"cancelled_by": "bob"}
    assert _events(store, job_id)[-1]["code"] == "CANCELLED"

    # The held step's next run, after the switch is lifted, finds the job ended and sends nothing.
    fence = int(store.redis.get(fence_key(job_id)))
    store.resume_sending("ops", "test")
    wait_until(lambda: int(store.redis.get(fence_key(job_id))) > fence, 30, "the held step to run again")
    assert store.require(job_id).state == "failed"
    assert sandbox.withdrawals(record.client_id) == []


def test_a_job_past_its_withdrawal_request_cannot_be_cancelled_and_says_so(stack, sandbox, store, unpaused):
    sandbox.configure(hold_status="pending")
    job_id = _submit("1")
    wait_until(lambda: (s := store.require(job_id).steps.get(REQUEST)) and s.state == "done", 30, "the request")
    sandbox.configure(hold_status=None)
    refused = cli(stack, "cancel", job_id)
    assert refused.returncode == 6
    assert ("cannot be cancelled: its withdrawal request (requestWithdrawal, attempts: 1 accepted) may have "
            "reached the exchange") in refused.stderr
    assert store.require(job_id).state in ("running", "needs_review")  # untouched: it polls on

    finished = wait_for(_submit("1"), timeout=30)
    again = cli(stack, "cancel", finished.job_id)
    assert again.returncode == 6 and "already ended succeeded" in again.stderr
    assert cli(stack, "cancel", uuid.uuid4().hex).returncode == 4


def test_cancel_a_batch_ends_each_of_its_unfinished_jobs(stack, sandbox, store, unpaused):
    batch = f"batch-{uuid.uuid4().hex[:8]}"
    store.pause_sending("ops", "test: batch")
    jobs = []
    for _ in range(2):
        key = uuid.uuid4().hex
        cid = withdrawal.client_id(key)
        job_id, _ = store.create(key, cid, {"symbol": "USDC", "blockchain": "Solana", "address": solana_address(),
                                            "quantity": "1", "clientId": cid}, batch_id=batch)
        workflow_chain(job_id).apply_async()
        jobs.append(job_id)
    for job_id in jobs:
        wait_until(lambda j=job_id: _waiting(store, j), 30, "the batch's jobs to wait")
    done = cli(stack, "cancel", "--batch", batch, "--by", "dave", "--reason", "payroll withdrawn")
    assert done.returncode == 0, done.stderr
    assert all(store.require(j).error.code == "CANCELLED" for j in jobs)
    listed = cli(stack, "jobs", "--batch", batch, "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {(r["job_id"], r["state"], r["code"], r["batch_id"]) for r in rows} == {
        (j, "failed", "CANCELLED", batch) for j in jobs}


# --- jobs and resolve --------------------------------------------------------------------------


def test_resolve_as_succeeded_records_the_withdrawal_found_and_refuses_failed(stack, sandbox, store):
    sandbox.configure(hold_status="ownershipVerificationRequired")
    record = wait_for(_submit("4"), timeout=60)
    sandbox.configure(hold_status=None)
    assert (record.state, record.error.code) == ("needs_review", "STATUS_NEEDS_REVIEW")
    [found] = sandbox.withdrawals(record.client_id)

    listed = cli(stack, "jobs", "--state", "needs_review", "--since", stamp(record.created_at - 1).replace(" ", "T"))
    assert listed.returncode == 0, listed.stderr
    assert f"{record.job_id}  needs_review  STATUS_NEEDS_REVIEW" in listed.stdout
    assert f"clientId {record.client_id}" in listed.stdout

    failed = cli(stack, "resolve", record.job_id, "--as", "failed", "--note", "looks lost")
    assert failed.returncode == 6
    assert f"the exchange shows #{found['id']} ownershipVerificationRequired for clientId {record.client_id}" \
           in failed.stderr
    assert store.require(record.job_id).state == "needs_review"

    done = cli(stack, "resolve", record.job_id, "--as", "succeeded", "--note", "verified with support, ticket 7",
               "--by", "carol")
    assert done.returncode == 0, done.stderr
    resolved = store.require(record.job_id)
    assert resolved.state == "succeeded"
    assert resolved.resolution.model_dump(exclude={"at"}) == {
        "outcome": "succeeded", "by": "carol", "note": "verified with support, ticket 7",
        "withdrawal_id": found["id"], "exchange_status": "ownershipVerificationRequired",
        "previous_state": JobState.NEEDS_REVIEW}
    assert resolved.outputs == {"withdrawalId": found["id"], "status": "ownershipVerificationRequired"}
    assert resolved.error.code == "STATUS_NEEDS_REVIEW"  # why it needed review is kept
    last = _events(store, record.job_id)[-1]
    assert (last["event"], last["by"], last["message"]) == ("resolved", "carol", "verified with support, ticket 7")
    assert len(sandbox.withdrawals(record.client_id)) == 1  # resolving sent nothing

    again = cli(stack, "resolve", record.job_id, "--as", "succeeded", "--note", "twice")
    assert again.returncode == 6 and "already resolved as succeeded by carol" in again.stderr
    listed = cli(stack, "jobs", "--state", "needs_review", "--since", "10m")
    assert record.job_id not in listed.stdout


def test_resolve_as_failed_when_the_exchange_shows_no_withdrawal_and_refuses_succeeded(stack, sandbox, store):
    sandbox.faults(p_5xx=1.0, only_withdrawals=True)  # every withdrawal request answered 503: outcome unknown
    record = wait_for(_submit("5"), timeout=60)
    sandbox.faults(p_5xx=0, only_withdrawals=False)
    assert (record.state, record.error.code) == ("needs_review", "OUTCOME_UNKNOWN")

    refused = cli(stack, "resolve", record.job_id, "--as", "succeeded", "--note", "paid?")
    assert refused.returncode == 6
    assert f"the exchange shows no withdrawal for clientId {record.client_id}" in refused.stderr

    done = cli(stack, "resolve", record.job_id, "--as", "failed", "--note", "503 before processing, checked")
    assert done.returncode == 0, done.stderr
    resolved = store.require(record.job_id)
    assert (resolved.state, resolved.resolution.outcome, resolved.resolution.withdrawal_id) == ("failed", "failed",
                                                                                               None)
    assert cli(stack, "resolve", uuid.uuid4().hex, "--as", "failed", "--note", "x").returncode == 4
    ok = wait_for(_submit("1"), timeout=60)
    not_review = cli(stack, "resolve", ok.job_id, "--as", "failed", "--note", "x")
    assert not_review.returncode == 6 and "is succeeded: only a job needing review is resolved" in not_review.stderr


# --- audit -------------------------------------------------------------------------------------


def test_audit_finds_a_withdrawal_made_behind_the_workers_back_and_records_that_disagree(stack, sandbox, store):
    since = time.time() - 1
    clean = wait_for(_submit("1"), timeout=60)
    altered = wait_for(_submit("2"), timeout=60)
    assert (clean.state, altered.state) == ("succeeded", "succeeded")
    # The exchange now shows the second job's withdrawal as pending.
    _hold(sandbox, altered.outputs["withdrawalId"], "pending")
    # A withdrawal made directly at the exchange with the worker's keys, not through a job.
    signer = Signer.from_secret(stack.api_key, stack.secret_file.read_text())
    client = BackpackClient(stack.sandbox_url, signer)
    behind = solana_address()
    try:
        made = client.send(HttpRequest("POST", "/wapi/v1/capital/withdrawals", "withdraw", body={
            "address": behind, "blockchain": "Solana", "clientId": "manual-1", "quantity": "7",
            "symbol": "USDC"})).body
    finally:
        client.close()
    # A record that names a withdrawal the exchange never made.
    key = uuid.uuid4().hex
    ghost, _ = store.create(key, withdrawal.client_id(key), {"symbol": "USDC", "blockchain": "Solana",
                                                             "address": solana_address(), "quantity": "1"})

    def claims_a_withdrawal(r):
        r.state, r.outputs = JobState.SUCCEEDED, {"withdrawalId": 999999, "status": "confirmed"}

    lease = store.acquire(ghost, 10)
    store.update(lease, claims_a_withdrawal)
    store.release(lease)

    report = cli(stack, "audit", "--since", str(since))
    assert report.returncode == 7, report.stderr
    out = report.stdout
    assert "withdrawals without a job (1):" in out
    assert f"#{made['id']} {made['quantity']} USDC on Solana to {behind}" in out and "clientId manual-1" in out
    assert "jobs whose record disagrees with the exchange (1):" in out
    assert f"job {altered.job_id}: record succeeded, the exchange shows #{altered.outputs['withdrawalId']} pending" \
           in out
    assert "jobs the exchange does not know (1):" in out
    assert f"job {ghost}: record succeeded names withdrawal 999999" in out
    assert clean.job_id not in out
    assert "3 findings" in out

    as_json = json.loads(cli(stack, "audit", "--since", str(since), "--json").stdout)
    assert sorted(f["kind"] for f in as_json["findings"]) == [
        "record_disagrees", "unknown_to_exchange", "withdrawal_without_job"]

    later = cli(stack, "audit", "--since", str(time.time() + 3600), "--until", str(time.time() + 7200))
    assert (later.returncode, later.stdout.splitlines()[-1]) == (0, "nothing found")


# --- watch -------------------------------------------------------------------------------------


def test_watch_replays_a_finished_job_with_the_events_own_times(stack, sandbox, store):
    record = wait_for(_submit("1"), timeout=60)
    events = _events(store, record.job_id)
    shown = cli(stack, "watch", record.job_id)
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    times = [line.split(" ", 1)[0] for line in lines if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert times == [stamp(float(e["at"]), date=False) for e in events]
    assert lines[-2].split()[1:3] == ["step_done", "reconcileWithdrawal"]  # the last event is never missed
    assert lines[-1] == f"=> succeeded withdrawalId={record.outputs['withdrawalId']} status=confirmed"
    assert len(lines) == len(events) + 2  # a header, one line per event (none broken in two), the outcome

    failed = wait_for(_submit("500", symbol="SOL"), timeout=60)
    shown = cli(stack, "watch", failed.job_id)
    assert shown.returncode == 1
    assert shown.stdout.splitlines()[-1].strip().startswith("=> failed INSUFFICIENT_FUNDS at getBalances: available")


def test_watch_prints_the_last_event_when_the_job_ends_between_two_reads(stack, store, capsys):
    """The write that ends a job lands after watch read the events but before it read the record."""
    key = uuid.uuid4().hex
    job_id, _ = store.create(key, withdrawal.client_id(key), {"symbol": "USDC", "blockchain": "Solana",
                                                              "address": solana_address(), "quantity": "1"})

    class EndsBetweenReads(type(store)):
        ended = False

        def events(self, job_id, after="0-0", block_ms=None):
            answer = super().events(job_id, after, block_ms)
            if not self.ended:
                self.ended = True
                lease = self.acquire(job_id, 10)
                self.update(lease, lambda r: setattr(r, "state", JobState.FAILED),
                            {"event": "job_ended", "state": "failed", "code": "CANCELLED", "step": "getBalances"})
                self.release(lease)
            return answer

    racing = EndsBetweenReads(store.redis, store.retention)
    assert follow(racing, job_id, timeout=10) == 1
    out = capsys.readouterr().out
    assert re.search(r"job_ended +getBalances +failed CANCELLED", out), out
