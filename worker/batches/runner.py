"""Run a payout file as a batch: plan it, check it against the balance, submit its rows, follow them to the end.

A batch's identity:
- the file's bytes (SHA-256): the same bytes submitted again are the same batch,
  which is resumed (rows not yet submitted are submitted; nothing is paid twice);
- each row's idempotency key, `<namespace>:<row key>`: never derived from the
  content or the line, so an edited, re-ordered or re-exported file never pays an
  unchanged row again. A row key remembers what it paid for BATCH_RETENTION
  (`bpxw:rowkey:...`); the same key with another payout is refused, naming the
  fields that differ.

Submitting is resumable from any state: rows are recorded `pending` first, then
each becomes a job (the job store's create is idempotent by key). Whoever
submits, the CLI, a re-run of it, a scheduled inbox run or the tracker when the
submitter went silent, does the same idempotent thing.

The tracker (`track`, a Celery task re-queued with a countdown, never a sleep in
a worker slot) records each row's end, keeps the batch's balance reservation at
what its unfinished rows still need, and ends the batch (writing its results
file when it has a `report_path`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog

from bpx_worker.batches.payout_file import PayoutFile, PayoutRow, plain, totals
from bpx_worker.batches.record import BatchRecord, BatchRow, BatchState, RowEnd, RowKey, RowResult, RowStatus
from bpx_worker.batches.report import write_results
from bpx_worker.batches.store import BatchStore, canonical
from bpx_worker.errors import IdempotencyConflict
from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.withdrawal.request import parse_request
from bpx_worker.withdrawal.rules import client_id

log = structlog.get_logger(__name__)

HEARTBEAT_EVERY = 25  # rows between two "the submitter is alive" marks


def idempotency_key(namespace: str, row_key: str) -> str:
    """The job's idempotency key for a row: the payout program and the row's own key, nothing else."""
    return f"{namespace}:{row_key}"


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # a new batch; its rows are submitted
    RESUMED = "resumed"  # these bytes were accepted before: that batch goes on, nothing is paid twice
    INVALID = "invalid"  # bad rows and no --skip-invalid: nothing written
    CONFLICT = "conflict"  # row keys used for another payout and no --skip-invalid: nothing written
    OVER_BALANCE = "over_balance"  # refused before any row was sent


@dataclass(frozen=True)
class Conflict:
    row: PayoutRow
    earlier: RowKey
    differences: dict[str, tuple[Any, Any]]  # field -> (paid before, this row)

    def describe(self) -> str:
        fields = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in self.differences.items())
        return (f"key {self.row.key!r} paid a different payout before (batch {self.earlier.batch}, "
                f"line {self.earlier.line}): {fields}")


@dataclass(frozen=True)
class AlreadyPaid:
    row: PayoutRow
    earlier: RowKey

    def describe(self) -> str:
        return f"already paid by batch {self.earlier.batch}, line {self.earlier.line} (job {self.earlier.job})"


@dataclass(frozen=True)
class Shortfall:
    need: Decimal
    available: Decimal
    reserved: Decimal  # held by other batches in flight

    @property
    def free(self) -> Decimal:
        return self.available - self.reserved


@dataclass(frozen=True)
class Plan:
    """What submitting the file would do, computed without writing anything."""

    file: PayoutFile
    namespace: str
    earlier: BatchRecord | None  # a batch that accepted these same bytes before
    new: list[PayoutRow]
    already: list[AlreadyPaid]
    conflicts: list[Conflict]

    @property
    def needs(self) -> dict[str, Decimal]:
        """What the rows to pay need, per symbol."""
        return totals(self.new)

    @property
    def symbols(self) -> list[str]:
        return sorted({row.symbol for row in self.file.rows})


@dataclass
class Submitted:
    outcome: Outcome
    batch_id: str | None = None
    shortfalls: dict[str, Shortfall] = field(default_factory=dict)


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {name: (before.get(name), now.get(name)) for name in sorted({*before, *now})
            if before.get(name) != now.get(name)}


def shortfalls(needs: Mapping[str, Decimal], available: Mapping[str, Decimal],
               reserved: Mapping[str, Decimal]) -> dict[str, Shortfall]:
    """The symbols whose need does not fit in what is available less what other batches hold."""
    result = {}
    for symbol, need in needs.items():
        entry = Shortfall(need, available.get(symbol, Decimal(0)), reserved.get(symbol, Decimal(0)))
        if need > entry.free:
            result[symbol] = entry
    return result


def _row_fingerprint(row: BatchRow) -> dict[str, str]:
    return {"symbol": row.symbol or "", "blockchain": row.blockchain or "", "address": row.address or "",
            "quantity": plain(Decimal(row.quantity or "0"))}


def _withdrawal_id(record: JobRecord) -> str | None:
    found = record.outputs.get("withdrawalId")
    if found is None:
        found = next((s.outputs["withdrawalId"] for s in record.steps.values() if "withdrawalId" in s.outputs), None)
    return None if found is None else str(found)


class BatchRunner:
    """Plans, submits, resumes and tracks batches. `enqueue(job_id)` sends a job's workflow chain;
    `track(batch_id, nonce, countdown)` sends the tracker task."""

    def __init__(self, batches: BatchStore, jobs: RedisJobStore, enqueue: Callable[[str], None],
                 track: Callable[[str, str, float], None], *, track_interval: float = 2.0,
                 submit_stall: float = 60.0, clock: Callable[[], float] = time.time):
        self.batches = batches
        self.jobs = jobs
        self.enqueue = enqueue
        self.send_tracker = track
        self.track_interval = track_interval
        self.submit_stall = submit_stall
        self.clock = clock

    # --- planning -------------------------------------------------------------------------------

    def plan(self, file: PayoutFile, namespace: str) -> Plan:
        earlier_id = self.batches.file_batch(namespace, file.sha256)
        earlier = self.batches.get(earlier_id) if earlier_id else None
        known = self.batches.row_keys(namespace, [row.key for row in file.rows])
        new: list[PayoutRow] = []
        already: list[AlreadyPaid] = []
        conflicts: list[Conflict] = []
        for row in file.rows:
            info = known.get(row.key)
            if info is None or (earlier is not None and info.batch == earlier.batch_id):
                new.append(row)
            elif canonical(info.fingerprint) != canonical(row.fingerprint()):
                conflicts.append(Conflict(row, info, differences(info.fingerprint, row.fingerprint())))
            elif info.job:
                already.append(AlreadyPaid(row, info))
            else:  # claimed by a submitter that died before creating the job: nothing was paid
                new.append(row)
        return Plan(file, namespace, earlier, new, already, conflicts)

    # --- submitting -----------------------------------------------------------------------------

    def submit(self, plan: Plan, read_balances: Callable[[list[str]], Mapping[str, Decimal]], *,
               skip_invalid: bool = False, allow_partial: bool = False, schedule: str | None = None,
               report_path: str | None = None, on_row: Callable[[BatchRow], None] | None = None) -> Submitted:
        """Submit the planned file (see the module docstring). `read_balances` is asked only for a new batch."""
        if plan.file.errors and not skip_invalid:
            return Submitted(Outcome.INVALID)
        if plan.conflicts and not skip_invalid:
            return Submitted(Outcome.CONFLICT)
        if plan.earlier is not None and plan.earlier.state is not BatchState.REFUSED:
            return self.resume(plan.earlier.batch_id, on_row)
        needs = plan.needs
        available = dict(read_balances(sorted(needs))) if needs else {}
        batch_id = new_batch_id()
        owner = self.batches.claim_file(plan.namespace, plan.file.sha256, batch_id)
        if owner != batch_id:  # the same bytes were accepted a moment ago by another submitter
            return self.resume(owner, on_row)
        now = self.clock()
        head = BatchRecord(batch_id=batch_id, namespace=plan.namespace, source=plan.file.name,
                           sha256=plan.file.sha256, format=plan.file.format, rows=len(plan.file.rows) + len(
                               plan.file.bad_lines), totals={k: plain(v) for k, v in needs.items()},
                           skip_invalid=skip_invalid, allow_partial=allow_partial, schedule=schedule,
                           report_path=report_path, created_at=now, submitter_seen_at=now)
        self.batches.create(head, self._initial_rows(plan))
        structlog.contextvars.bind_contextvars(batch_id=batch_id)
        short = self.batches.reserve(batch_id, needs, available, force=allow_partial)
        if short and not allow_partial:
            found = {symbol: Shortfall(needs[symbol], available.get(symbol, Decimal(0)), held)
                     for symbol, held in short.items()}
            refusal = "; ".join(f"{symbol}: needs {plain(s.need)}, available {plain(s.available)}, held by other "
                                f"batches {plain(s.reserved)}" for symbol, s in found.items())
            self.batches.finish(batch_id, state=BatchState.REFUSED, refusal=refusal, finished_at=self.clock())
            self.batches.release_file(plan.namespace, plan.file.sha256, batch_id)
            log.warning("batch_refused_over_balance", batch_id=batch_id, refusal=refusal)
            return Submitted(Outcome.OVER_BALANCE, batch_id, found)
        log.info("batch_accepted", batch_id=batch_id, rows=len(plan.new), source=plan.file.name)
        self.start_tracking(batch_id)
        self.submit_pending(batch_id, on_row)
        return Submitted(Outcome.ACCEPTED, batch_id)

    def resume(self, batch_id: str, on_row: Callable[[BatchRow], None] | None = None) -> Submitted:
        """Go on with a batch accepted before: submit what is still pending, make sure it is tracked."""
        head = self.batches.get(batch_id)
        if head is not None and head.open:
            self.batches.set(batch_id, submitter_seen_at=self.clock())
            self.ensure_tracked(batch_id)
            self.submit_pending(batch_id, on_row)
        return Submitted(Outcome.RESUMED, batch_id)

    def _initial_rows(self, plan: Plan) -> list[BatchRow]:
        rows: list[BatchRow] = []
        conflicts = {c.row.line: c for c in plan.conflicts}
        already = {a.row.line: a for a in plan.already}
        for row in plan.file.rows:
            request = row.request
            entry = BatchRow(line=row.line, key=row.key, symbol=request.symbol, blockchain=request.blockchain,
                             address=request.address, quantity=format(request.quantity, "f"),
                             status=RowStatus.PENDING)
            if row.line in conflicts:
                entry.status, entry.reason = RowStatus.REFUSED, conflicts[row.line].describe()
            elif row.line in already:
                found = already[row.line]
                entry.status, entry.job_id = RowStatus.ALREADY_PAID, found.earlier.job
                entry.paid_by, entry.reason = found.earlier.batch, found.describe()
            rows.append(entry)
        for line in plan.file.bad_lines:
            reasons = "; ".join(f"{e.field}: {e.reason}" for e in plan.file.errors if e.line == line)
            rows.append(BatchRow(line=line, status=RowStatus.INVALID, reason=reasons))
        return rows

    def submit_pending(self, batch_id: str, on_row: Callable[[BatchRow], None] | None = None) -> int:
        """Turn every pending row into a job, idempotently; returns how many rows were handled."""
        head = self.batches.get(batch_id)
        if head is None or not head.open:
            return 0
        handled = 0
        for row in self.batches.rows(batch_id):
            if row.status is not RowStatus.PENDING or row.key is None:
                continue
            self._submit_row(head, row)
            self.batches.put_row(batch_id, row)
            handled += 1
            if handled % HEARTBEAT_EVERY == 0:
                self.batches.set(batch_id, submitter_seen_at=self.clock())
            if on_row is not None:
                on_row(row)
        current = self.batches.get(batch_id)
        if current is not None and current.state is BatchState.SUBMITTING:
            self.batches.set(batch_id, state=BatchState.RUNNING, submitter_seen_at=self.clock())
        return handled

    def _submit_row(self, head: BatchRecord, row: BatchRow) -> None:
        assert row.key is not None  # noqa: S101 - checked by the caller
        namespace = head.namespace
        fingerprint = _row_fingerprint(row)
        kind, owner, job, extra = self.batches.claim_row_key(namespace, row.key, fingerprint, head.batch_id,
                                                             row.line)
        if kind == "conflict":
            earlier = self.batches.row_keys(namespace, [row.key]).get(row.key)
            before = earlier.fingerprint if earlier else {}
            found = Conflict(_as_payout_row(row), earlier or RowKey(fingerprint=before, batch=owner, line=0),
                             differences(before, fingerprint))
            row.status, row.reason = RowStatus.REFUSED, found.describe()
            return
        if kind == "same" and owner != head.batch_id and job:
            row.status, row.job_id, row.paid_by = RowStatus.ALREADY_PAID, job, owner
            row.reason = f"already paid by batch {owner}, line {extra} (job {job})"
            return
        key = idempotency_key(namespace, row.key)
        cid = client_id(key)
        request = _as_payout_row(row).request
        inputs = {**request.public_inputs(), "clientId": cid}
        try:
            # The job store compares the request too: a job under this key for another payout is refused here.
            job_id, created = self.jobs.create(key, cid, inputs, None, batch_id=head.batch_id,
                                               request=request.fingerprint())
        except IdempotencyConflict as exc:
            row.status, row.reason = RowStatus.REFUSED, str(exc)
            return
        job_id = self.batches.set_row_key_job(namespace, row.key, job_id)
        row.status, row.job_id = RowStatus.SUBMITTED, job_id
        record = None if created else self.jobs.get(job_id)
        if created or (record is not None and record.state is JobState.QUEUED):
            # Again when a previous submit died before enqueueing: a duplicate chain is harmless.
            self.enqueue(job_id)

    # --- tracking -------------------------------------------------------------------------------

    def start_tracking(self, batch_id: str) -> None:
        self.send_tracker(batch_id, self.batches.take_tracking(batch_id), self.track_interval)

    def ensure_tracked(self, batch_id: str) -> bool:
        """Start a tracker for an open batch whose tracker has been silent; True when one was started."""
        head = self.batches.get(batch_id)
        if head is None or not head.open:
            return False
        stale_after = max(10 * self.track_interval, 30.0)
        if head.tracked_at is not None and self.clock() - head.tracked_at < stale_after:
            return False
        self.start_tracking(batch_id)
        return True

    def track(self, batch_id: str, nonce: str) -> bool:
        """One look at the batch; True when tracking stops (the batch ended, or a newer tracker took over)."""
        head = self.batches.get(batch_id)
        if head is None or head.tracker != nonce or not head.open:
            return True
        now = self.clock()
        self.batches.set(batch_id, tracked_at=now)
        if head.state is BatchState.SUBMITTING and now - (head.submitter_seen_at or head.created_at) > \
                self.submit_stall:
            log.warning("batch_submitter_silent", batch_id=batch_id, finishing=True)
            self.batches.set(batch_id, submitter_seen_at=now)
            self.submit_pending(batch_id)
            head = self.batches.get(batch_id) or head
        results = self.results(batch_id)
        known = self.batches.ended(batch_id)
        ends = {r.line: RowEnd(state=r.state, withdrawal_id=r.withdrawal_id, error_code=r.error_code,
                               error=r.detail if r.status is RowStatus.SUBMITTED else None)
                for r in results if r.ended and r.line not in known}
        self.batches.end_rows(batch_id, ends)
        for r in results:
            if r.line in ends and r.status is RowStatus.SUBMITTED and r.key:
                self.batches.end_row_key(head.namespace, r.key, r.state, r.withdrawal_id)
        unfinished = [r for r in results if r.status in (RowStatus.PENDING, RowStatus.SUBMITTED) and not r.ended]
        needs: dict[str, Decimal] = {}
        for r in unfinished:
            if r.symbol and r.quantity:
                needs[r.symbol] = needs.get(r.symbol, Decimal(0)) + Decimal(r.quantity)
        symbols = set(head.totals) | set(needs)
        self.batches.set_reservation(batch_id, needs, symbols)
        waiting = [r for r in results if r.status is RowStatus.ALREADY_PAID and not r.ended]
        if head.state is BatchState.SUBMITTING or unfinished or waiting:
            return False
        self.batches.set_reservation(batch_id, {}, symbols)
        self.batches.finish(batch_id, state=BatchState.ENDED, finished_at=self.clock())
        log.info("batch_ended", batch_id=batch_id, rows=len(results))
        # Read again after the end is recorded: a report path added meanwhile is written here, or by whoever
        # added it, who then sees the batch ended.
        head = self.batches.get(batch_id) or head
        for path in filter(None, [head.report_path, *head.also_report]):
            write_results(path, results)
        return True

    # --- reading --------------------------------------------------------------------------------

    def results(self, batch_id: str) -> list[RowResult]:
        """Every row of the batch with its state now (ended rows from the record, the rest from their jobs)."""
        rows = self.batches.rows(batch_id)
        ended = self.batches.ended(batch_id)
        wanted = [r.job_id for r in rows if r.job_id and r.line not in ended]
        records = self.jobs.get_many(wanted)
        missing = [r for r in rows if r.job_id and r.line not in ended and r.job_id not in records and r.key]
        head = self.batches.get(batch_id) if missing else None
        remembered = self.batches.row_keys(head.namespace, [r.key for r in missing if r.key]) if head else {}
        return [_result(row, ended.get(row.line), records.get(row.job_id or ""), remembered.get(row.key or ""))
                for row in rows]


def _as_payout_row(row: BatchRow) -> PayoutRow:
    request = parse_request({"symbol": row.symbol, "blockchain": row.blockchain, "address": row.address,
                             "quantity": row.quantity})
    return PayoutRow(row.line, row.key or "", request)


def _result(row: BatchRow, end: RowEnd | None, record: JobRecord | None, remembered: RowKey | None) -> RowResult:
    base: dict[str, Any] = {"line": row.line, "key": row.key, "symbol": row.symbol, "quantity": row.quantity,
                            "job_id": row.job_id, "status": row.status,
                            "detail": row.reason if row.status is not RowStatus.SUBMITTED else None}
    if row.status in (RowStatus.INVALID, RowStatus.REFUSED, RowStatus.PENDING):
        return RowResult(**base, state=row.status.value if row.status is not RowStatus.PENDING else "pending")
    if end is not None:
        detail = base["detail"] if row.status is RowStatus.ALREADY_PAID else end.error
        return RowResult(**{**base, "detail": detail}, state=end.state, withdrawal_id=end.withdrawal_id,
                         error_code=end.error_code, ended=True)
    if record is not None:
        error = record.error
        detail = base["detail"] if row.status is RowStatus.ALREADY_PAID else (error.message if error else None)
        return RowResult(**{**base, "detail": detail}, state=record.state.value,
                         withdrawal_id=_withdrawal_id(record), error_code=error.code if error else None,
                         ended=record.terminal)
    if remembered is not None and remembered.state:  # the job record is gone; the row key remembers its end
        return RowResult(**base, state=remembered.state, withdrawal_id=remembered.withdrawal_id, ended=True)
    return RowResult(**base, state="unknown")


def symbols_of(rows: Iterable[RowResult]) -> list[str]:
    return sorted({r.symbol for r in rows if r.symbol})
