"""What operators do to jobs: list them, pause and resume sending, cancel, resolve a review, audit.

None of these sends a request that moves money. `resolve` and `audit` read the
exchange's withdrawal history (signed GETs: they need the API keys). Every write
to a job goes through its lease and fencing token, like a step's: a cancel can
never land between a step marking its withdrawal request `sending` and sending it.
Every action is kept in the record's events and in the operators' log
(`bpxw:operations`) with who, when and why.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bpx_worker.arazzo import Workflow
from bpx_worker.engine.engine import Exchange, is_at_most_once
from bpx_worker.jobs.base import Lease
from bpx_worker.jobs.record import ErrorCode, JobFailure, JobRecord, JobState, Resolution, StepState
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.withdrawal import audit as audit_rules
from bpx_worker.withdrawal import history

LEASE_WAIT = 15.0  # seconds an operator's action waits for a running step to release the job


def operator(by: str | None) -> str:
    """Who acts: `--by`, else the login name."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class Outcome:
    """What an action on one job did. `done` False says why not, in `kind` and `message`."""

    job_id: str
    kind: Literal["done", "not_found", "refused", "busy"]
    message: str
    record: JobRecord | None = None

    @property
    def done(self) -> bool:
        return self.kind == "done"


def _take(store: RedisJobStore, job_id: str, ttl: float, wait: float) -> Lease | None:
    """The job's lease, waiting up to `wait` seconds for a running step to let it go."""
    deadline = time.monotonic() + wait
    while True:
        lease = store.acquire(job_id, ttl)
        if lease is not None or time.monotonic() >= deadline:
            return lease
        time.sleep(min(max(store.lease_ttl(job_id), 0.05), 0.2, max(deadline - time.monotonic(), 0.0)))


# --- cancel ------------------------------------------------------------------------------------


def sent_steps(workflow: Workflow, record: JobRecord) -> list[str]:
    """The at-most-once steps whose request may have reached the exchange (an attempt that may have
    landed, or the step done). A job with any cannot be cancelled."""
    sent = []
    for step in workflow.steps:
        entry = record.steps.get(step.step_id)
        if is_at_most_once(step) and entry is not None and (
                entry.state is StepState.DONE or any(a.state.may_have_reached for a in entry.attempts)):
            sent.append(step.step_id)
    return sent


def cancel(store: RedisJobStore, workflow: Workflow, job_id: str, *, by: str, reason: str, lease_ttl: float,
           wait: float = LEASE_WAIT) -> Outcome:
    """End a job that has not reached its withdrawal request as `failed`, code CANCELLED.

    Refused for a job that has ended, or whose withdrawal request may have reached the exchange
    (an attempt recorded `sending`, `ambiguous` or `accepted`). Done under the job's lease: a step
    cannot mark its request `sending` meanwhile, and a step that marked it first makes this refuse.
    """
    if store.get(job_id) is None:
        return Outcome(job_id, "not_found", f"no job {job_id}")
    lease = _take(store, job_id, lease_ttl, wait)
    if lease is None:
        return Outcome(job_id, "busy", f"job {job_id}: a step kept it busy for {wait:g} s; try again")
    try:
        record = store.require(job_id)
        if record.terminal:
            return Outcome(job_id, "refused", f"job {job_id} already ended {record.state.value}; nothing to cancel",
                           record)
        sent = sent_steps(workflow, record)
        if sent:
            attempts = ", ".join(f"{a.n} {a.state.value}" for a in record.steps[sent[0]].attempts) or "done"
            return Outcome(job_id, "refused", f"job {job_id} cannot be cancelled: its withdrawal request "
                           f"({sent[0]}, attempts: {attempts}) may have reached the exchange", record)
        step_id = record.current_step or workflow.steps[0].step_id
        message = f"cancelled by {by}: {reason}; no withdrawal request was sent"

        def cancelled(r: JobRecord) -> None:
            now = time.time()
            r.state, r.finished_at, r.current_step = JobState.FAILED, now, None
            r.error = JobFailure.model_validate({"step": step_id, "code": ErrorCode.CANCELLED.value,
                                                 "message": message, "cancelled_by": by})
            entry = r.steps.get(step_id)
            if entry is not None and entry.state is StepState.RUNNING:
                entry.state, entry.ended_at = StepState.FAILED, now
                entry.waiting_on = entry.waiting_since = None

        record = store.update(lease, cancelled, {"event": "job_ended", "state": "failed", "step": step_id,
                                                 "code": ErrorCode.CANCELLED.value, "by": by, "message": message})
        store.record_operation("cancel", by, reason, job_id=job_id)
        return Outcome(job_id, "done", message, record)
    finally:
        store.release(lease)


# --- resolve -----------------------------------------------------------------------------------


def resolve(store: RedisJobStore, client: Exchange, workflow: Workflow, job_id: str, *,
            outcome: Literal["succeeded", "failed"], note: str, by: str, lease_ttl: float,
            withdrawal_id: str | None = None, wait: float = LEASE_WAIT) -> Outcome:
    """Record a human's decision on a `needs_review` job; sends nothing.

    The withdrawal is first looked up at the exchange by the job's clientId (only withdrawals whose
    symbol, blockchain, quantity and address agree with the job's request count as its own):
    `succeeded` needs exactly one (or the one `withdrawal_id` names) and records its id; `failed` is
    refused while the exchange shows one.
    """
    record = store.get(job_id)
    if record is None:
        return Outcome(job_id, "not_found", f"no job {job_id}")
    refusal = _not_in_review(record)
    if refusal:
        return Outcome(job_id, "refused", refusal, record)
    found = history.by_client_id(client, workflow, record.client_id)
    own = [w for w in found if not history.differences(record.inputs, w)]
    others = [w for w in found if w not in own]
    seen = _listing(own, others)
    chosen: Mapping[str, Any] | None = None
    if outcome == "succeeded":
        if withdrawal_id is not None:
            chosen = next((w for w in own if str(w.get("id")) == withdrawal_id), None)
            if chosen is None:
                return Outcome(job_id, "refused", f"withdrawal {withdrawal_id} is not one the exchange shows "
                               f"for clientId {record.client_id} matching this job ({seen})", record)
        elif len(own) == 1:
            chosen = own[0]
        elif not own:
            return Outcome(job_id, "refused", f"the exchange shows no withdrawal for clientId {record.client_id} "
                           f"matching this job ({seen}): it cannot be resolved as succeeded", record)
        else:
            return Outcome(job_id, "refused", f"the exchange shows several withdrawals for clientId "
                           f"{record.client_id} ({seen}): name one with --withdrawal-id", record)
    elif own:
        return Outcome(job_id, "refused", f"the exchange shows {seen} for clientId {record.client_id}: "
                       "the job cannot be resolved as failed while a withdrawal exists", record)

    lease = _take(store, job_id, lease_ttl, wait)
    if lease is None:
        return Outcome(job_id, "busy", f"job {job_id}: busy for {wait:g} s; try again")
    try:
        refusal = _not_in_review(store.require(job_id))  # someone may have resolved it meanwhile
        if refusal:
            return Outcome(job_id, "refused", refusal, store.require(job_id))
        resolution = Resolution(outcome=outcome, by=by, at=time.time(), note=note,
                                withdrawal_id=chosen.get("id") if chosen else None,
                                exchange_status=chosen.get("status") if chosen else None)

        def resolved(r: JobRecord) -> None:
            r.resolution = resolution
            r.state = JobState(outcome)
            r.current_step = None
            if chosen is not None:
                r.outputs = {"withdrawalId": chosen.get("id"), "status": chosen.get("status")}

        record = store.update(lease, resolved, {
            "event": "resolved", "state": outcome, "by": by, "withdrawal_id": resolution.withdrawal_id,
            "status": resolution.exchange_status, "message": note})
        store.record_operation("resolve", by, note, job_id=job_id, outcome=outcome,
                               withdrawal_id=resolution.withdrawal_id)
        found_text = f"; withdrawal {resolution.withdrawal_id} ({resolution.exchange_status})" if chosen else \
            f"; the exchange shows no withdrawal for clientId {record.client_id}"
        return Outcome(job_id, "done", f"job {job_id} resolved as {outcome} by {by}{found_text}", record)
    finally:
        store.release(lease)


def _not_in_review(record: JobRecord) -> str | None:
    if record.resolution is not None:
        r = record.resolution
        return f"job {record.job_id} was already resolved as {r.outcome} by {r.by}"
    if record.state is not JobState.NEEDS_REVIEW:
        return f"job {record.job_id} is {record.state.value}: only a job needing review is resolved"
    return None


def _listing(own: list[Mapping[str, Any]], others: list[Mapping[str, Any]]) -> str:
    parts = [f"#{w.get('id')} {w.get('status')}" for w in own]
    parts += [f"#{w.get('id')} differs from the job's request" for w in others]
    return ", ".join(parts) or "none"


# --- audit -------------------------------------------------------------------------------------


def audit(store: RedisJobStore, client: Exchange, workflow: Workflow, start: float, end: float
          ) -> audit_rules.AuditReport:
    """Compare the exchange's withdrawals created from `start` to `end` with the job records (by clientId).

    Every record still kept is matched, so a job created before `start` still owns its withdrawal. A
    record that names a withdrawal missing from the window is looked up by clientId before it is
    reported as unknown to the exchange (its withdrawal may fall just outside the window).
    """
    window = history.between(client, workflow, start, end)
    withdrawals = list(window)
    records = list(store.jobs())
    ids = {repr(w.get("id")) for w in withdrawals}
    for record in audit_rules.unknown_candidates(withdrawals, records, start, end):
        for w in history.by_client_id(client, workflow, record.client_id):
            if repr(w.get("id")) not in ids:
                ids.add(repr(w.get("id")))
                withdrawals.append(w)
    report = audit_rules.compare(withdrawals, records, start, end)
    report.withdrawals = len(window)
    return report
