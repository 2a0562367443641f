"""Run one step of one job against the job record: the core behind each Celery task.

Every step is safe to run twice. It first takes the job's lease (one copy per
job at a time, with a fencing token), then reads the record: a step already
recorded is skipped and the chain goes on; a job already ended stops the chain.

Who retries what (so retries never multiply):
- the HTTP client never retries;
- a transient failure (connection refused, 5xx or timeout on a GET, 429) ends
  the attempt and the task is re-queued by Celery with a countdown from the
  retry policy, counted in the job record, up to RETRY_MAX_ATTEMPTS;
- reconciliation polls the same way, with its own backoff, until the
  withdrawal is settled or RECONCILE_DEADLINE passes (then `needs_review`).

The withdrawal request is sent at most once. Before sending, the attempt is
recorded as `sending`; its answer is recorded in the same write as the step's
outputs. Any attempt that may have reached the exchange (`sending` left behind
by a crash, `ambiguous`, `accepted`) is never re-sent: the
withdrawal is looked up by clientId until LOOKUP_DEADLINE, then the job ends
`needs_review`. Only an attempt the exchange certainly did not process
(`not_sent`) may be followed by another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from bpx_worker.config.settings import Settings
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.arazzo.workflow import HttpRequest, Workflow, step_outputs, workflow_outputs
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.errors import AmbiguousError, ExchangeError, LeaseLost, RejectedError, TransientError
from bpx_worker.engine.execution import Attempt, attempt_step
from bpx_worker.arazzo.expressions import Context
from bpx_worker.jobs.store import TERMINAL, JobStore, Lease
from bpx_worker.engine.policy import Backoff, reconcile_policy, retry_policy

log = structlog.get_logger(__name__)


# Attempt states after which the withdrawal may exist at the exchange: never send again.
MAY_HAVE_REACHED = frozenset({"sending", "ambiguous", "accepted"})


def _attempt_state(number: int, state: str, error: str | None = None) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        entry = r["submission"]["attempts"][number - 1]
        entry["state"] = state
        if error:
            entry["error"] = error

    return change


@dataclass(frozen=True)
class Next:
    """What the task does after a run: go on with the chain, run again later, or stop."""

    action: str  # "continue" | "retry" | "stop"
    countdown: float = 0.0
    state: str = ""


CONTINUE = Next("continue")


class StepRunner:
    def __init__(self, store: JobStore, client: BackpackClient, workflow: Workflow, settings: Settings,
                 open_sealed: Callable[[bytes], str] | None = None):
        self.store = store
        self.client = client
        self.workflow = workflow
        self.settings = settings
        self.open_sealed = open_sealed
        self.retry: Backoff = retry_policy(settings)
        self.poll: Backoff = reconcile_policy(settings)
        self._handlers = {
            withdrawal.BALANCE_STEP: self._get_balances,
            withdrawal.REQUEST_STEP: self._request_withdrawal,
            withdrawal.RECONCILE_STEP: self._reconcile,
        }
        missing = {s.step_id for s in workflow.steps} - set(self._handlers)
        if missing:
            raise ValueError(f"no handler for workflow steps {sorted(missing)}")

    def run(self, job_id: str, step_id: str) -> Next:
        lease = self.store.acquire(job_id, self.settings.lease_ttl)
        if lease is None:
            # Another copy of a step of this job is running (or died holding the
            # lease): come back when the lease has run out.
            return Next("retry", countdown=self.store.lease_ttl(job_id) + 0.5)
        try:
            record = self.store.require(job_id)
            if record["state"] in TERMINAL:
                return Next("stop", state=record["state"])
            if record["steps"].get(step_id, {}).get("state") == "done":
                return CONTINUE
            with structlog.contextvars.bound_contextvars(job_id=job_id, step=step_id):
                self._start(lease, record, step_id)
                return self._handlers[step_id](lease, record)
        except LeaseLost:
            log.warning("lease_lost", job_id=job_id, step=step_id)
            return Next("stop", state="superseded")
        finally:
            self.store.release(lease)

    # --- record helpers ---------------------------------------------------------------------

    def _start(self, lease: Lease, record: dict[str, Any], step_id: str) -> None:
        def change(r: dict[str, Any]) -> None:
            r["state"], r["current_step"] = "running", step_id
            entry = r["steps"].setdefault(step_id, {"state": "running", "runs": 0, "started_at": time.time()})
            entry["runs"] += 1

        self.store.update(lease, change, {"event": "step_started", "step": step_id})
        record.update(self.store.require(lease.job_id))

    def _done(self, lease: Lease, step_id: str, outputs: dict[str, Any], status_code: int,
              extra: Callable[[dict], None] | None = None) -> None:
        def change(r: dict[str, Any]) -> None:
            entry = r["steps"][step_id]
            entry.update(state="done", outputs=outputs, status_code=status_code, ended_at=time.time())
            entry["seconds"] = round(entry["ended_at"] - entry["started_at"], 3)
            if extra:
                extra(r)

        self.store.update(lease, change, {"event": "step_done", "step": step_id, "status_code": status_code})

    def _end(self, lease: Lease, state: str, step_id: str, code: str, message: str,
             extra: Callable[[dict], None] | None = None, **detail: Any) -> Next:
        def change(r: dict[str, Any]) -> None:
            r["state"], r["finished_at"] = state, time.time()
            r["error"] = {"step": step_id, "code": code, "message": message, **detail}
            r["steps"][step_id].update(state=state, ended_at=time.time())
            if extra:
                extra(r)

        self.store.update(lease, change, {"event": "job_ended", "state": state, "step": step_id, "code": code,
                                          "message": message})
        log.warning("job_ended", state=state, code=code, message=message)
        return Next("stop", state=state)

    def _transient(self, lease: Lease, record: dict, step_id: str, exc: TransientError, on_exhausted: str) -> Next:
        failures = record["steps"][step_id].get("transient_failures", 0) + 1

        def change(r: dict[str, Any]) -> None:
            r["steps"][step_id]["transient_failures"] = failures
            r["steps"][step_id]["last_error"] = str(exc)

        self.store.update(lease, change, {"event": "transient_failure", "step": step_id, "message": str(exc)})
        if self.retry.exhausted(failures):
            return self._end(lease, on_exhausted, step_id, "TRANSIENT_EXHAUSTED",
                             f"{failures} transient failures, last: {exc}")
        delay = max(self.retry.delay(failures - 1), exc.retry_after or 0)
        return Next("retry", countdown=min(delay, self.retry.max_delay))

    def _context(self, record: dict[str, Any], extra_inputs: dict[str, Any] | None = None) -> Context:
        steps = {sid: s.get("outputs", {}) for sid, s in record["steps"].items() if s.get("state") == "done"}
        return Context(inputs={**record["inputs"], **(extra_inputs or {})}, steps=steps)

    # --- step 1: balances -------------------------------------------------------------------

    def _get_balances(self, lease: Lease, record: dict[str, Any]) -> Next:
        step_id = withdrawal.BALANCE_STEP
        try:
            attempt = attempt_step(self.workflow.step(step_id), self._context(record), self.client)
        except TransientError as exc:
            return self._transient(lease, record, step_id, exc, on_exhausted="failed")
        except RejectedError as exc:
            return self._end(lease, "failed", step_id, exc.code, exc.message)
        if not attempt.succeeded:
            return self._end(lease, "failed", step_id, "CRITERIA_NOT_MET", "; ".join(attempt.failed))
        inputs = record["inputs"]
        problem = withdrawal.shortfall(attempt.outputs.get("balances"), inputs["symbol"], Decimal(inputs["quantity"]))
        if problem:
            return self._end(lease, "failed", step_id, "INSUFFICIENT_FUNDS", problem + " (checked before sending)")
        self._done(lease, step_id, attempt.outputs, attempt.status_code)
        return CONTINUE

    # --- step 2: the withdrawal, at most once -------------------------------------------------

    def _request_withdrawal(self, lease: Lease, record: dict[str, Any]) -> Next:
        step_id = withdrawal.REQUEST_STEP
        attempts = record["submission"]["attempts"]
        if any(a["state"] in MAY_HAVE_REACHED for a in attempts):
            return self._look_up(lease, record)

        number = len(attempts) + 1

        def sending(r: dict[str, Any]) -> None:
            r["submission"]["attempts"].append({"n": number, "state": "sending", "at": time.time()})

        self.store.update(lease, sending, {"event": "submitting", "step": step_id, "attempt": number})
        extra = {}
        sealed = self.store.sealed_2fa(lease.job_id)
        if sealed is not None and self.open_sealed is not None:
            extra["twoFactorToken"] = self.open_sealed(sealed)
        try:
            attempt = attempt_step(self.workflow.step(step_id), self._context(record, extra), self.client)
        except TransientError as exc:
            self._mark_attempt(lease, number, "not_sent", str(exc))
            record = self.store.require(lease.job_id)
            return self._transient(lease, record, step_id, exc, on_exhausted="failed")
        except AmbiguousError as exc:
            self._mark_attempt(lease, number, "ambiguous", str(exc))
            return Next("retry", countdown=self.poll.delay(0))
        except RejectedError as exc:
            self.store.drop_sealed_2fa(lease.job_id)
            return self._end(lease, "failed", step_id, exc.code, exc.message,
                             extra=_attempt_state(number, "rejected", f"{exc.code}: {exc.message}"))
        finally:
            extra.clear()
        self.store.drop_sealed_2fa(lease.job_id)
        accepted = _attempt_state(number, "accepted")
        if not attempt.succeeded:
            return self._end(lease, "needs_review", step_id, "CRITERIA_NOT_MET", "; ".join(attempt.failed),
                             extra=accepted, client_id=record["client_id"])
        # The attempt's outcome and the step's outputs land in one write: a crash
        # can never leave an accepted attempt without the withdrawal it created.
        self._done(lease, step_id, attempt.outputs, attempt.status_code, extra=accepted)
        return CONTINUE

    def _mark_attempt(self, lease: Lease, number: int, state: str, error: str | None = None) -> None:
        self.store.update(lease, _attempt_state(number, state, error),
                          {"event": f"attempt_{state}", "attempt": number, "message": error})

    def _look_up(self, lease: Lease, record: dict[str, Any]) -> Next:
        """Find a withdrawal that may have been sent, by clientId; never send it again."""
        step_id = withdrawal.REQUEST_STEP
        submission = record["submission"]
        client_id = record["client_id"]
        lookups = submission.get("lookups", 0)
        operation = self.workflow.step(withdrawal.RECONCILE_STEP).operation
        request = HttpRequest(operation.method, operation.path, operation.instruction, {"clientId": client_id})
        found, error = None, None
        try:
            response = self.client.send(request)
            matches = [w for w in response.body if isinstance(w, dict) and w.get("clientId") == client_id]
            found = matches[0] if matches else None
        except (TransientError, RejectedError) as exc:
            error = str(exc)
        failed_lookups = submission.get("failed_lookups", 0) + (error is not None)

        def counted(r: dict[str, Any]) -> None:
            r["submission"].update(lookups=lookups + 1, failed_lookups=failed_lookups)

        self.store.update(lease, counted, {"event": "lookup", "step": step_id, "found": found is not None,
                                           "message": error})
        if found is not None:
            judged = Context(inputs=record["inputs"]).with_response(200, found, {})
            outputs = step_outputs(self.workflow.step(step_id), judged)
            self.store.drop_sealed_2fa(lease.job_id)
            self._done(lease, step_id, outputs, 200, extra=lambda r: r["submission"].update(found_by_lookup=True))
            return CONTINUE
        last_sent = max(a["at"] for a in submission["attempts"])
        past_deadline = time.time() - last_sent > self.settings.lookup_deadline
        # Only an answer that lacks the withdrawal counts as "not found"; a failed
        # lookup proves nothing, so it is tried again (within the retry budget).
        if past_deadline and (error is None or self.retry.exhausted(failed_lookups)):
            self.store.drop_sealed_2fa(lease.job_id)
            return self._end(
                lease, "needs_review", step_id, "OUTCOME_UNKNOWN",
                f"the withdrawal may have reached the exchange but clientId {client_id} was not found "
                f"after {lookups + 1} lookups ({failed_lookups} failed); it was not re-sent",
                client_id=client_id, attempts=submission["attempts"],
            )
        return Next("retry", countdown=self.poll.delay(lookups))

    # --- step 3: reconciliation ---------------------------------------------------------------

    def _reconcile(self, lease: Lease, record: dict[str, Any]) -> Next:
        step_id = withdrawal.RECONCILE_STEP
        entry = record["steps"][step_id]
        polls = entry.get("polls", 0)
        requested_at = record["steps"][withdrawal.REQUEST_STEP].get("ended_at", entry["started_at"])
        past_deadline = time.time() - requested_at > self.settings.reconcile_deadline
        try:
            attempt = attempt_step(self.workflow.step(step_id), self._context(record), self.client)
        except RejectedError as exc:
            return self._end(lease, "needs_review", step_id, exc.code, exc.message, client_id=record["client_id"])
        except ExchangeError as exc:  # a GET: transient; the withdrawal exists, so keep polling
            attempt, note = None, str(exc)
        else:
            note = "not yet in the withdrawal history" if attempt.retry else "; ".join(attempt.failed)
        status = attempt.outputs.get("reconciledStatus") if attempt and attempt.succeeded else None

        def polled(r: dict[str, Any]) -> None:
            r["steps"][step_id]["polls"] = polls + 1
            r["steps"][step_id]["last_seen_status"] = status

        self.store.update(lease, polled, {"event": "poll", "step": step_id, "status": status, "message": note})
        if attempt is not None and attempt.succeeded:
            settled = withdrawal.settlement(status)
            if settled == "confirmed":
                return self._succeed(lease, record, attempt)
            if settled == "needs_review":
                return self._end(lease, "needs_review", step_id, "STATUS_NEEDS_REVIEW",
                                 f"withdrawal status {status!r} needs a human", client_id=record["client_id"])
        elif attempt is not None and (attempt.retry is None or polls >= attempt.retry.retry_limit):
            return self._end(lease, "needs_review", step_id, "CRITERIA_NOT_MET", note, client_id=record["client_id"])
        if past_deadline:
            return self._end(lease, "needs_review", step_id, "RECONCILE_DEADLINE",
                             f"not settled {self.settings.reconcile_deadline:g}s after the request "
                             f"(last status {status or 'not yet recorded'})", client_id=record["client_id"])
        return Next("retry", countdown=self.poll.delay(polls))

    def _succeed(self, lease: Lease, record: dict[str, Any], attempt: Attempt) -> Next:
        done = self._context(record)
        steps = {**done.steps, attempt.step_id: attempt.outputs}
        outputs = workflow_outputs(self.workflow, Context(inputs=done.inputs, steps=steps))

        def finish(r: dict[str, Any]) -> None:
            r["state"], r["current_step"], r["finished_at"], r["outputs"] = "succeeded", None, time.time(), outputs

        self._done(lease, attempt.step_id, attempt.outputs, attempt.status_code, extra=finish)
        log.info("job_succeeded", withdrawal_id=outputs.get("withdrawalId"), status=outputs.get("status"))
        return Next("stop", state="succeeded")
