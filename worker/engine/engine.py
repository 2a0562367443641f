"""The step engine: run one step of one job against a job store, and say what comes next.

One engine serves both ways of running a job: Celery tasks (a Redis job store;
the task turns `Next` into continue / retry with a countdown / stop) and the
in-process run (a memory job store; the loop sleeps the countdown). A step's
behaviour comes from what the document says about it, plus the `Rules` table:

- every step: build the request from the document, send it, judge the success
  criteria, map the outputs; a rule may refuse to go on (`Rules.after`);
- a step whose operation is not idempotent (POST, ...) is sent **at most once**:
  the attempt is recorded as `sending` before the request leaves; an answer that
  may have been lost is looked up (`Rules.lookup`), never re-sent; only an
  attempt the exchange certainly did not process may be followed by another;
- a step with a `retry` failure action is **polled**: re-run after the poll
  backoff while its criteria say "not yet" or its status is in progress
  (`Rules.settlement`), until the retry limit or the poll deadline. Its reads
  are background requests (they yield to every other request when the rate
  limit binds), and `run_polls` polls many jobs with one shared read of the
  list they filter (`exchange/filters.read_shared`), each judged alone;
- a transient failure (certainly not processed) is retried with the retry
  backoff, counted in the record, up to its limit.

Once a request that moves money may have reached the exchange, no later failure
can say "failed": the job ends `needs_review`.

A `gate` (the kill switch: `bpx-worker pause`) can hold every new request that
moves money: it is asked right before an attempt is marked `sending`; a held
step records what it waits on (`steps.<id>.waiting_on`) and comes back after a
short countdown. Reads, polls and lookups of requests already sent go on.

Every step is safe to run twice: it first takes the job's lease (one run per job
at a time, with a fencing token), then reads the record; a step already done is
skipped and a job already ended stops the chain.

A run stages its changes to the record and writes them once, fenced, when it
ends (with the lease's release); the one write that must land before something
happens outside is the `sending` mark of an at-most-once request, written before
the request leaves. A run that dies before its final write loses only what a
re-run finds again (a read's answer, counts); never the mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from bpx_worker.arazzo import (
    Context,
    HttpRequest,
    Operation,
    Step,
    Workflow,
    build_request,
    failed_conditions,
    retry_action,
    step_outputs,
    succeeded,
    workflow_outputs,
)
from bpx_worker.engine.backoff import Backoff
from bpx_worker.engine.rules import Refusal, Rules, Verdict, same_value
from bpx_worker.errors import (
    AmbiguousError,
    ConfigurationError,
    DocumentError,
    ExchangeError,
    JobNotFound,
    LeaseExpiring,
    LeaseLost,
    RateLimited,
    RejectedError,
    TransientError,
    UnsendableRequest,
)
from bpx_worker.exchange import filters
from bpx_worker.exchange.client import Response
from bpx_worker.jobs.base import Change, JobStore, Lease
from bpx_worker.jobs.record import (
    Attempt,
    AttemptState,
    ErrorCode,
    JobFailure,
    JobRecord,
    JobState,
    StepRecord,
    StepState,
)

log = structlog.get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Exchange(Protocol):
    """What the engine needs of the exchange client (`bpx_worker.exchange.client.BackpackClient`)."""

    def send(self, request: HttpRequest, *, background: bool = False) -> Response: ...

    def reserve_slot(self) -> None:
        """Wait for the next request's turn under the rate limit (RateLimited: nothing reserved)."""
        ...


@dataclass(frozen=True)
class Next:
    """What the caller does after a run: go on with the next step, run this one again later, or stop."""

    action: Literal["continue", "retry", "stop"]
    countdown: float = 0.0
    state: JobState | None = None
    code: str | None = None  # set when this run ended the job failed / needs_review: the error code it recorded
    # A retry that is a poll of a polled step ("not yet"): the Celery path keeps it in the poll
    # schedule (a Redis sorted set) instead of a countdown message held in a worker's memory.
    poll: bool = False


CONTINUE = Next("continue")


@dataclass(frozen=True)
class Timing:
    """The engine's clocks: retry and poll backoff, deadlines, and the lease."""

    retry: Backoff  # transient failures; also the pace of lookups
    poll_factor: float  # a polled step waits its retry action's retryAfter, growing by this factor...
    poll_max_delay: float  # ...up to this many seconds
    poll_deadline: float  # seconds from a polled step's start to a settled answer
    lookup_deadline: float  # seconds from the last send to finding an ambiguous request
    lease_ttl: float
    hold_recheck: float = 2.0  # a step held by the gate asks again after this many seconds...
    hold_heartbeat: float = 300.0  # ...and touches the record this often, so the sweep leaves it be
    # A request that is sent at most once leaves only while the lease has at least this long left
    # (the HTTP connect and read timeouts): the send ends inside the lease whatever the worker's pool.
    send_budget: float = 0.0


@dataclass(frozen=True)
class SharedPolls:
    """How `run_polls` reads once for many jobs (see `exchange/filters.read_shared`)."""

    # The list is read from this many seconds before the oldest job was created: whatever a job made
    # was made after it was created by our clock; the margin covers the exchange's clock being behind.
    since_margin: float = 120.0
    page_size: int = 1000
    max_pages: int = 10


# Asked right before a request that moves money is sent: what holds it now (e.g. "pause"), or None to go on.
SendGate = Callable[[], str | None]


@dataclass(frozen=True)
class _Judged:
    status_code: int
    outputs: dict[str, Any]
    succeeded: bool
    polls: bool  # a retry failure action matched: "not yet", come back
    failed: list[str] = field(default_factory=list)


def is_at_most_once(step: Step) -> bool:
    """A step whose request is not idempotent: it is never sent twice."""
    return step.operation.method not in SAFE_METHODS


def is_polled(step: Step) -> bool:
    return bool(step.retry_actions)


class StepEngine:
    def __init__(self, store: JobStore, client: Exchange, workflow: Workflow, rules: Rules, timing: Timing,
                 open_sealed: Callable[[bytes], str] | None = None, clock: Callable[[], float] = time.time,
                 gate: SendGate | None = None, shared_polls: SharedPolls | None = None):
        self.store = store
        self.shared_polls = shared_polls
        self.gate = gate
        self.client = client
        self.workflow = workflow
        self.rules = rules
        self.timing = timing
        self.open_sealed = open_sealed
        self.clock = clock
        self._lookups: dict[str, Operation] = {}
        operations = {s.operation.operation_id: s.operation for s in workflow.steps}
        for step in workflow.steps:
            lookup = rules.lookup.get(step.operation.operation_id)
            if lookup is not None:
                if lookup.operation_id not in operations:
                    raise DocumentError(f"step {step.step_id!r}: its lookup operation {lookup.operation_id!r} "
                                        f"is not used by workflow {workflow.workflow_id!r}")
                self._lookups[step.step_id] = operations[lookup.operation_id]

    # --- entry points -------------------------------------------------------------------------

    def run(self, job_id: str, step_id: str) -> Next:
        """Run `step_id` of the job once; safe to call twice, and from two processes at once."""
        step = self.workflow.step(step_id)
        taken = self.store.take(job_id, self.timing.lease_ttl)
        if taken.lease is None or taken.record is None:
            # Another run of this job is working (or died holding the lease): come back when it runs out.
            return Next("retry", countdown=taken.wait + 0.5)
        return self._run_taken(step, taken.lease, taken.record)

    def run_polls(self, job_ids: Sequence[str], step_id: str) -> dict[str, Next]:
        """Poll the polled step `step_id` of many jobs, asking the exchange once for all of them.

        Each job is run as `run` runs it (its lease, its record, its own criteria, outputs
        and settlement); only the read is shared: one read of the list their requests
        filter, from the oldest job's creation on, and each job gets the items its own
        request matches. A job the shared read cannot answer reads alone. When the shared
        read is refused by the rate limit, nothing is written: every job comes back later.
        """
        step = self.workflow.step(step_id)
        if not is_polled(step):
            raise DocumentError(f"step {step_id!r} is not polled: it has no retry failure action")
        outcomes: dict[str, Next] = {}
        held: list[tuple[Lease, JobRecord]] = []
        for job_id in job_ids:
            try:
                taken = self.store.take(job_id, self.timing.lease_ttl)
            except JobNotFound:
                outcomes[job_id] = Next("stop")  # expired with its retention: nothing left to poll
                continue
            if taken.lease is None or taken.record is None:
                outcomes[job_id] = Next("retry", countdown=taken.wait + 0.5, poll=True)
                continue
            done = taken.record.steps.get(step_id)
            if taken.record.terminal or (done is not None and done.state is StepState.DONE):
                outcomes[job_id] = self._run_taken(step, taken.lease, taken.record)
            else:
                held.append((taken.lease, taken.record))
        try:
            answers = self._read_shared(step, held)
        except RateLimited as exc:
            for lease, _ in held:
                self.store.release(lease)
                outcomes[lease.job_id] = self._rate_limited(exc, poll=True)
            return outcomes
        except BaseException:
            for lease, _ in held:
                self.store.release(lease)
            raise
        for lease, record in held:
            outcomes[lease.job_id] = self._run_taken(step, lease, record, answers.get(lease.job_id))
        return outcomes

    def _read_shared(self, step: Step, held: Sequence[tuple[Lease, JobRecord]]) -> dict[str, Response | ExchangeError]:
        """Each job's answer from one shared read; a job left out reads alone. Raises RateLimited."""
        if self.shared_polls is None or len(held) < 2:
            return {}
        requests: dict[str, HttpRequest] = {}
        for lease, record in held:
            try:
                requests[lease.job_id] = build_request(step, self._context(record))
            except (ConfigurationError, DocumentError):
                continue  # its own run builds it again and records why it cannot
        since = min(record.created_at for _, record in held) - self.shared_polls.since_margin
        try:
            shared = filters.read_shared(lambda r: self.client.send(r, background=True), list(requests.values()),
                                         int(since * 1000), page_size=self.shared_polls.page_size,
                                         max_pages=self.shared_polls.max_pages)
        except RateLimited:
            raise
        except RejectedError as exc:
            # Not an answer about any job's withdrawal (the list read itself was refused): each job reads alone.
            log.warning("shared_read_refused", step=step.step_id, code=exc.code, message=exc.message)
            return {}
        except ExchangeError as exc:
            # The read failed as each job's own read would have: each job's poll records it.
            return {job_id: exc for job_id in requests}
        page = shared.page
        if page is None:
            return {}
        return {job_id: Response(page.status, items, page.headers, page.url)
                for job_id, items in zip(requests, shared.answers, strict=True) if items is not None}

    def _run_taken(self, step: Step, lease: Lease, record: JobRecord,
                   answer: Response | ExchangeError | None = None) -> Next:
        """Run the step under a lease taken with the record; gives the lease back."""
        job_id, step_id = lease.job_id, step.step_id
        try:
            if record.terminal:
                return _ended(record, step_id)
            done = record.steps.get(step_id)
            if done is not None and done.state is StepState.DONE:
                return CONTINUE
            with structlog.contextvars.bound_contextvars(job_id=job_id, step=step_id, **self._log_ids(record)):
                if is_at_most_once(step) and not _may_have_reached(done):
                    # Checked before the step starts too, so a long pause writes nothing at each recheck.
                    hold = self._hold()
                    if hold is not None:
                        return self._wait(lease, record, step, hold)
                record = self._start(lease, step_id, waited=done.waiting_on if done is not None else None)
                try:
                    if is_at_most_once(step):
                        outcome = self._send_once(lease, record, step)
                    else:
                        outcome = self._read(lease, record, step, answer)
                except ConfigurationError as exc:
                    outcome = self._end(lease, step.step_id, ErrorCode.CONFIGURATION, str(exc),
                                        state=self._failure_state(record))
                # What the run staged (start, outputs, counts, the end) is written in one fenced write
                # that also gives the lease back. Only the `sending` mark is written earlier, before
                # the request that must not be sent twice.
                self.store.flush(lease, release=True)
                return outcome
        except LeaseExpiring:
            # Nothing was sent: run the step again under a fresh lease.
            log.warning("lease_expiring", job_id=job_id, step=step_id)
            return Next("retry", countdown=0.0)
        except LeaseLost:
            log.warning("lease_lost", job_id=job_id, step=step_id)
            return Next("stop")
        finally:
            self.store.release(lease)

    def end_job(self, job_id: str, step_id: str, code: ErrorCode, message: str) -> Next:
        """End a job from outside a step run (a worker that cannot build its engine, an operator)."""
        lease = self.store.acquire(job_id, self.timing.lease_ttl)
        if lease is None:
            return Next("retry", countdown=self.store.lease_ttl(job_id) + 0.5)
        try:
            record = self.store.require(job_id)
            if record.terminal:
                return Next("stop", state=record.state)
            self._start(lease, step_id)
            outcome = self._end(lease, step_id, code, message, state=self._failure_state(record))
            self.store.flush(lease, release=True)
            return outcome
        finally:
            self.store.release(lease)

    # --- reads and polls ----------------------------------------------------------------------

    def _read(self, lease: Lease, record: JobRecord, step: Step,
              answer: Response | ExchangeError | None = None) -> Next:
        """Send the step's read (or take the `answer` a shared read found for it) and judge it."""
        ctx = self._context(record)
        try:
            request = build_request(step, ctx)
            if answer is None:
                # A poll is a background request: it yields to fresh work when the rate limit binds.
                answer = self.client.send(request, background=is_polled(step))
            elif isinstance(answer, ExchangeError):
                raise answer.with_traceback(None)
            judged = self._judge(step, ctx, request, answer)
        except RateLimited as exc:
            return self._rate_limited(exc, poll=is_polled(step))
        except RejectedError as exc:
            return self._end(lease, step.step_id, exc.code, exc.message, state=self._failure_state(record),
                             source="exchange")
        except ExchangeError as exc:  # on a read, anything else is transient: nothing changed
            if is_polled(step):
                return self._poll(lease, record, step, None, str(exc))
            return self._transient(lease, record, step, exc)
        operation = step.operation.operation_id
        if not judged.succeeded:
            if judged.polls:
                return self._poll(lease, record, step, None, "not yet: " + "; ".join(judged.failed))
            return self._end(lease, step.step_id, ErrorCode.CRITERIA_NOT_MET, "; ".join(judged.failed),
                             state=self._failure_state(record))
        check = self.rules.after.get(operation)
        refusal = check(judged.outputs, record.inputs) if check else None
        if refusal is not None:
            return self._refuse(lease, record, step, refusal)
        # Statuses are judged only on a step the document polls; elsewhere its criteria alone decide.
        settlement = self.rules.settlement.get(operation) if is_polled(step) else None
        if settlement is not None:
            verdict = settlement.judge(judged.outputs)
            status = judged.outputs.get(settlement.output)
            if verdict is Verdict.IN_PROGRESS:
                return self._poll(lease, record, step, status, f"status {status}")
            if verdict is Verdict.NEEDS_REVIEW:
                self._count_poll(lease, step, status, f"status {status}")
                return self._end(lease, step.step_id, ErrorCode.STATUS_NEEDS_REVIEW,
                                 f"status {status!r} needs a human", state=JobState.NEEDS_REVIEW)
        if is_polled(step):
            self._count_poll(lease, step, judged.outputs.get(settlement.output) if settlement else None, "settled")
        keep = self.rules.keep.get(operation)
        outputs = keep(judged.outputs, record.inputs) if keep else judged.outputs
        return self._done(lease, record, step, judged.status_code, outputs)

    def _poll(self, lease: Lease, record: JobRecord, step: Step, status: str | None, note: str) -> Next:
        polls = self._count_poll(lease, step, status, note)
        action = step.retry_actions[0]
        limit = action.effective_retry_limit
        if polls > limit:
            return self._end(lease, step.step_id, ErrorCode.CRITERIA_NOT_MET,
                             f"still not settled after {polls} polls (retryLimit {limit}): {note}",
                             state=self._failure_state(record))
        started = record.step(step.step_id).started_at
        if self.clock() - started > self.timing.poll_deadline:
            return self._end(lease, step.step_id, ErrorCode.RECONCILE_DEADLINE,
                             f"not settled {self.timing.poll_deadline:g}s after the step started "
                             f"(last status {status or 'not yet recorded'})", state=self._failure_state(record))
        pace = Backoff(action.effective_retry_after, self.timing.poll_factor, self.timing.poll_max_delay)
        return Next("retry", countdown=pace.delay(polls - 1), poll=True)

    def _count_poll(self, lease: Lease, step: Step, status: str | None, note: str) -> int:
        def polled(r: JobRecord) -> None:
            entry = r.step(step.step_id)
            entry.polls += 1
            entry.last_seen_status = status

        record = self.store.stage(lease, polled, {"event": "poll", "step": step.step_id, "status": status,
                                                   "message": note})
        return record.step(step.step_id).polls

    # --- at most once -------------------------------------------------------------------------

    def _send_once(self, lease: Lease, record: JobRecord, step: Step) -> Next:
        entry = record.step(step.step_id)
        if any(a.state.may_have_reached for a in entry.attempts):
            return self._look_up(lease, record, step)
        check = self.rules.before_send.get(step.operation.operation_id)
        refusal = check(None, record.inputs) if check else None
        if refusal is not None:
            self.store.drop_sealed_2fa(lease.job_id)
            return self._refuse(lease, record, step, refusal)
        secret_inputs: dict[str, Any] = {}
        sealed = self.store.sealed_2fa(lease.job_id)
        if sealed is not None:
            # Opened before the attempt is recorded: a token that cannot be read means nothing was sent.
            try:
                if self.open_sealed is None:
                    raise ValueError("this worker has no key to open it")
                secret_inputs["twoFactorToken"] = self.open_sealed(sealed)
            except Exception as exc:  # noqa: BLE001 - any failure to open means the same: nothing sent
                self.store.drop_sealed_2fa(lease.job_id)
                return self._end(lease, step.step_id, ErrorCode.TWO_FACTOR_UNREADABLE,
                                 f"the sealed two-factor token does not open with this worker's key "
                                 f"({type(exc).__name__}); nothing was sent", state=JobState.FAILED)
        try:
            ctx = self._context(record, secret_inputs)
            request = build_request(step, ctx)
            number = len(entry.attempts) + 1
            # The kill switch, asked last: a pause set before this point holds the request.
            hold = self._hold()
            if hold is not None:
                return self._wait(lease, self.store.require(lease.job_id), step, hold)
            # The rate limit's turn is taken before the mark: a worker that dies while it waits for its turn
            # leaves no `sending` mark of a request that never left (nothing to look up, no review).
            try:
                self.client.reserve_slot()
            except RateLimited as exc:
                return self._transient(lease, record, step, exc)
            self._mark(lease, step, number, AttemptState.SENDING, event="submitting",
                       lease_left=self.timing.send_budget or None)
            try:
                response = self.client.send(request)
            except TransientError as exc:
                marked = self._mark(lease, step, number, AttemptState.NOT_SENT, str(exc))
                return self._transient(lease, marked, step, exc)
            except UnsendableRequest as exc:  # could not be put on the wire: nothing was sent
                if sealed is not None:
                    self.store.drop_sealed_2fa(lease.job_id)
                return self._end(lease, step.step_id, ErrorCode.CONFIGURATION, str(exc), state=JobState.FAILED,
                                 also=_attempt_state(step.step_id, number, AttemptState.NOT_SENT, str(exc)))
            except AmbiguousError as exc:
                self._mark(lease, step, number, AttemptState.AMBIGUOUS, str(exc))
                return Next("retry", countdown=self.timing.retry.delay(0))
            except RejectedError as exc:
                if sealed is not None:
                    self.store.drop_sealed_2fa(lease.job_id)
                return self._end(lease, step.step_id, exc.code, exc.message, state=JobState.FAILED,
                                 source="exchange",
                                 also=_attempt_state(step.step_id, number, AttemptState.REJECTED, str(exc)))
            if sealed is not None:
                self.store.drop_sealed_2fa(lease.job_id)
            judged = self._judge(step, ctx, request, response)
        finally:
            secret_inputs.clear()
        accepted = _attempt_state(step.step_id, number, AttemptState.ACCEPTED)
        if not judged.succeeded:
            return self._end(lease, step.step_id, ErrorCode.CRITERIA_NOT_MET,
                             f"answered {judged.status_code}, but " + "; ".join(judged.failed),
                             state=JobState.NEEDS_REVIEW, also=accepted, client_id=record.client_id)
        # The attempt's outcome and the step's outputs land in one write: a crash can
        # never leave an accepted attempt without what it created.
        return self._done(lease, record, step, judged.status_code, judged.outputs, also=accepted)

    def _mark(self, lease: Lease, step: Step, number: int, state: AttemptState, error: str | None = None,
              event: str | None = None, lease_left: float | None = None) -> JobRecord:
        change = _attempt_state(step.step_id, number, state, error)
        detail = {"event": event or f"attempt_{state}", "step": step.step_id, "attempt": number, "message": error}
        if state is AttemptState.SENDING:
            # Written (with everything staged before it) before the request leaves: durable first.
            return self.store.update(lease, change, detail, lease_left=lease_left)
        return self.store.stage(lease, change, detail)

    def _hold(self) -> str | None:
        return self.gate() if self.gate is not None else None

    def _wait(self, lease: Lease, record: JobRecord, step: Step, hold: str) -> Next:
        """Hold a request that moves money: come back after a short countdown. The wait is recorded once
        (and the record touched now and then, so the sweep does not take the job for stalled)."""
        entry = record.steps.get(step.step_id)
        now = self.clock()
        if entry is None or entry.waiting_on != hold:
            def waiting(r: JobRecord) -> None:
                r.state, r.current_step = JobState.RUNNING, step.step_id
                e = r.steps.setdefault(step.step_id, StepRecord(started_at=now))
                e.waiting_on, e.waiting_since = hold, now

            self.store.update(lease, waiting, {"event": "waiting", "step": step.step_id, "on": hold,
                                               "message": f"held ({hold}): nothing sent yet"})
            log.warning("step_held", on=hold)
        elif now - record.updated_at >= self.timing.hold_heartbeat:
            self.store.update(lease, _unchanged)
        return Next("retry", countdown=self.timing.hold_recheck)

    def _look_up(self, lease: Lease, record: JobRecord, step: Step) -> Next:
        """Find what an attempt that may have reached the exchange created; never send it again."""
        entry = record.step(step.step_id)
        lookup = self.rules.lookup.get(step.operation.operation_id)
        operation = self._lookups.get(step.step_id)
        sent = build_request(step, self._context(record)).body or {}
        if lookup is None or operation is None or lookup.key not in sent:
            return self._end(lease, step.step_id, ErrorCode.OUTCOME_UNKNOWN,
                             "the request may have reached the exchange and there is no way to look it up; "
                             "it was not re-sent", state=JobState.NEEDS_REVIEW, client_id=record.client_id,
                             attempts=entry.attempts)
        value = sent[lookup.key]
        found: Mapping[str, Any] | None = None
        error: str | None = None
        try:
            response = self.client.send(HttpRequest(operation.method, operation.path, operation.instruction,
                                                    {lookup.key: value}))
            items = response.body if isinstance(response.body, list) else []
            found = next((w for w in items if isinstance(w, Mapping) and w.get(lookup.key) == value), None)
        except ExchangeError as exc:
            error = str(exc)

        def counted(r: JobRecord) -> None:
            e = r.step(step.step_id)
            e.lookups += 1
            e.failed_lookups += error is not None

        entry = self.store.stage(lease, counted, {"event": "lookup", "step": step.step_id,
                                                   "found": found is not None, "message": error}).step(step.step_id)
        if found is not None:
            self.store.drop_sealed_2fa(lease.job_id)
            differences = _differences(sent, found, lookup.fields)
            if differences:
                return self._end(lease, step.step_id, ErrorCode.LOOKUP_MISMATCH,
                                 f"{lookup.key} {value} found a withdrawal that differs from this job's request "
                                 f"in {', '.join(sorted(differences))}; it was not taken as this job's",
                                 state=JobState.NEEDS_REVIEW, client_id=record.client_id, attempts=entry.attempts,
                                 expected={k: sent.get(k) for k in lookup.fields}, found=dict(found))
            outputs = step_outputs(step, Context(inputs=record.inputs).with_response(200, found, {}))

            def by_lookup(r: JobRecord) -> None:
                r.step(step.step_id).found_by_lookup = True

            return self._done(lease, record, step, 200, outputs, also=by_lookup)
        last_sent = max(a.at for a in entry.attempts)
        past_deadline = self.clock() - last_sent > self.timing.lookup_deadline
        # Only an answer that lacks the request counts as "not found"; a failed lookup
        # proves nothing, so it is tried again (within the retry budget).
        if past_deadline and (error is None or self.timing.retry.exhausted(entry.failed_lookups)):
            self.store.drop_sealed_2fa(lease.job_id)
            return self._end(
                lease, step.step_id, ErrorCode.OUTCOME_UNKNOWN,
                f"the request may have reached the exchange but {lookup.key} {value} was not found after "
                f"{entry.lookups} lookups ({entry.failed_lookups} failed); it was not re-sent",
                state=JobState.NEEDS_REVIEW, client_id=record.client_id, attempts=entry.attempts,
            )
        return Next("retry", countdown=min(self.timing.retry.delay(entry.lookups - 1), self.timing.retry.max_delay))

    # --- judging and recording ----------------------------------------------------------------

    def _judge(self, step: Step, ctx: Context, request: HttpRequest, response: Response) -> _Judged:
        judged = ctx.with_response(response.status, response.body, response.headers, response.url, request.method)
        ok = succeeded(step, judged)
        return _Judged(
            response.status, step_outputs(step, judged), ok,
            polls=not ok and retry_action(step, judged) is not None,
            failed=[] if ok else failed_conditions(step, judged),
        )

    def _log_ids(self, record: JobRecord) -> dict[str, Any]:
        """Ids worth carrying on every log line of the job: its batch, and what its steps created so far."""
        ids: dict[str, Any] = {"batch_id": record.batch_id} if record.batch_id else {}
        for outputs in record.done_outputs().values():
            for output, field_name in self.rules.log_ids.items():
                value = outputs.get(output)
                if isinstance(value, str | int):
                    ids[field_name] = value
        return ids

    def _context(self, record: JobRecord, extra_inputs: Mapping[str, Any] | None = None) -> Context:
        return Context(inputs={**record.inputs, **(extra_inputs or {})}, steps=record.done_outputs())

    def _failure_state(self, record: JobRecord) -> JobState:
        """`needs_review` once a request that moves money may have reached the exchange, else `failed`."""
        for step in self.workflow.steps:
            entry = record.steps.get(step.step_id)
            if is_at_most_once(step) and entry is not None and (
                    entry.state is StepState.DONE or any(a.state.may_have_reached for a in entry.attempts)):
                return JobState.NEEDS_REVIEW
        return JobState.FAILED

    def _start(self, lease: Lease, step_id: str, waited: str | None = None) -> JobRecord:
        def change(r: JobRecord) -> None:
            r.state, r.current_step = JobState.RUNNING, step_id
            entry = r.steps.setdefault(step_id, StepRecord(started_at=self.clock()))
            if entry.waiting_on is not None and entry.runs == 0:
                entry.started_at = self.clock()  # the step starts now; the wait is `waiting_since` to now
            entry.state = StepState.RUNNING
            entry.runs += 1
            entry.waiting_on = entry.waiting_since = None

        return self.store.stage(lease, change, {"event": "step_started", "step": step_id,
                                                "message": f"released ({waited})" if waited else None})

    def _rate_limited(self, exc: RateLimited, poll: bool = False) -> Next:
        """Our own limiter held the request back: nothing was sent and nothing failed. Come back when the
        slot is due; not counted (against RETRY_MAX_ATTEMPTS or a retryLimit), so a large batch never
        exhausts a job. A poll comes back as a poll (to the schedule, not a countdown message)."""
        return Next("retry", countdown=min(max(exc.retry_after or 0.0, 0.05), self.timing.retry.max_delay),
                    poll=poll)

    def _transient(self, lease: Lease, record: JobRecord, step: Step, exc: ExchangeError) -> Next:
        if isinstance(exc, RateLimited):
            return self._rate_limited(exc)
        failures = record.step(step.step_id).transient_failures + 1

        def change(r: JobRecord) -> None:
            r.step(step.step_id).transient_failures = failures
            r.step(step.step_id).last_error = str(exc)

        self.store.stage(lease, change, {"event": "transient_failure", "step": step.step_id, "message": str(exc)})
        retry = self.timing.retry
        if retry.exhausted(failures):
            return self._end(lease, step.step_id, ErrorCode.TRANSIENT_EXHAUSTED,
                             f"{failures} transient failures, last: {exc}", state=self._failure_state(record))
        delay = max(retry.delay(failures - 1), exc.retry_after or 0)
        return Next("retry", countdown=min(delay, retry.max_delay))

    def _refuse(self, lease: Lease, record: JobRecord, step: Step, refusal: Refusal) -> Next:
        return self._end(lease, step.step_id, refusal.code, refusal.message, state=self._failure_state(record))

    def _done(self, lease: Lease, record: JobRecord, step: Step, status_code: int, outputs: dict[str, Any],
              also: Change | None = None) -> Next:
        last = step is self.workflow.steps[-1]
        final: dict[str, Any] = {}
        if last:
            steps = {**record.done_outputs(), step.step_id: outputs}
            final = workflow_outputs(self.workflow, Context(inputs=record.inputs, steps=steps))

        def change(r: JobRecord) -> None:
            now = self.clock()
            entry = r.step(step.step_id)
            entry.state, entry.outputs, entry.status_code, entry.ended_at = StepState.DONE, outputs, status_code, now
            entry.seconds = round(now - entry.started_at, 3)
            if also is not None:
                also(r)
            if last:
                r.state, r.current_step, r.finished_at, r.outputs = JobState.SUCCEEDED, None, now, final

        self.store.stage(lease, change, {"event": "step_done", "step": step.step_id, "status_code": status_code})
        if last:
            log.info("job_succeeded", **{k: v for k, v in final.items() if isinstance(v, str | int)})
            return Next("stop", state=JobState.SUCCEEDED)
        return CONTINUE

    def _end(self, lease: Lease, step_id: str, code: str, message: str, *, state: JobState,
             source: Literal["worker", "exchange"] = "worker", also: Change | None = None,
             client_id: str | None = None, attempts: list[Attempt] | None = None, **detail: Any) -> Next:
        def change(r: JobRecord) -> None:
            now = self.clock()
            r.state, r.finished_at = state, now
            r.error = JobFailure(step=step_id, code=str(code), source=source, message=message, client_id=client_id,
                                 attempts=attempts, **detail)
            entry = r.step(step_id)
            entry.state = StepState.FAILED if state is JobState.FAILED else StepState.NEEDS_REVIEW
            entry.ended_at = now
            if also is not None:
                also(r)

        self.store.stage(lease, change, {"event": "job_ended", "state": state.value, "step": step_id,
                                          "code": str(code), "message": message})
        log.warning("job_ended", state=state.value, code=str(code), message=message)
        return Next("stop", state=state, code=str(code))


def _ended(record: JobRecord, step_id: str) -> Next:
    """A run that finds its job ended: stop, with the error code when the job ended at this step
    (so a run of that step reports the end again, e.g. in Flower, as the run that ended it did)."""
    error = record.error
    return Next("stop", state=record.state, code=error.code if error is not None and error.step == step_id else None)


def _may_have_reached(entry: StepRecord | None) -> bool:
    return entry is not None and any(a.state.may_have_reached for a in entry.attempts)


def _unchanged(_: JobRecord) -> None:
    """A write that changes nothing but the record's `updated_at`."""


def _attempt_state(step_id: str, number: int, state: AttemptState, error: str | None = None) -> Change:
    def change(r: JobRecord) -> None:
        attempts = r.step(step_id).attempts
        if len(attempts) < number:
            attempts.append(Attempt(n=number, state=state, at=time.time(), error=error))
        else:
            attempts[number - 1].state = state
            if error:
                attempts[number - 1].error = error

    return change


def _differences(sent: Mapping[str, Any], found: Mapping[str, Any], fields: Mapping[str, str]) -> set[str]:
    """The request fields whose value in the found item differs (numbers compared as decimals)."""
    return {name for name, theirs in fields.items() if name in sent and not same_value(sent[name], found.get(theirs))}
