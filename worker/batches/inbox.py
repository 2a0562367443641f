"""A scheduled run over an inbox directory: take the finished files, submit each as a batch, file them away.

    <inbox>/payouts-0601.csv            a finished file (written elsewhere and renamed in;
                                        or, with `marker`, any file with `<name>.ready` beside it)
    <inbox>/processing/                 taken by a run (a crashed run's files are taken up first)
    <inbox>/processed/<name>            accepted; `<name>.results.csv` appears when the batch ends
    <inbox>/rejected/<name>             refused; `<name>.rejected.txt` says why, row by row

A file is taken by renaming it into `processing/` (atomic: of two runs only one
can take it), and moved on once its batch is accepted or refused. A run never
waits for a batch to end: the batch's tracker writes the results file. Paying
twice is impossible even when a run repeats on the same file (the file's content
hash names its batch, row keys name each payout).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import structlog

from bpx_worker.batches.payout_file import parse_payout_file
from bpx_worker.batches.report import write_results
from bpx_worker.batches.runner import BatchRunner, Outcome, Submitted
from bpx_worker.config.settings import PayoutSchedule
from bpx_worker.withdrawal.request import SafetyLimits

log = structlog.get_logger(__name__)

PROCESSING, PROCESSED, REJECTED = "processing", "processed", "rejected"
SUFFIXES = (".csv", ".jsonl", ".ndjson")
MARKER = ".ready"


@dataclass(frozen=True)
class FileOutcome:
    name: str
    outcome: Outcome
    batch_id: str | None
    moved_to: Path


def finished_files(inbox: Path, marker: bool) -> list[Path]:
    """Files ready to be taken, by name: visible payout files (with a `.ready` marker when asked)."""
    if not inbox.is_dir():
        return []
    found = []
    for path in inbox.iterdir():
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
            continue
        if marker and not Path(str(path) + MARKER).exists():
            continue
        found.append(path)
    return sorted(found)


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    if not target.exists():
        return target
    stem, suffix = os.path.splitext(name)
    return directory / f"{stem}-{uuid.uuid4().hex[:6]}{suffix}"


def take(inbox: Path, path: Path) -> Path | None:
    """Move a finished file into processing/; None when another run took it first."""
    target = _free_name(inbox / PROCESSING, path.name)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    Path(str(path) + MARKER).unlink(missing_ok=True)
    return target


def settle(inbox: Path, path: Path, where: str) -> Path:
    target = _free_name(inbox / where, path.name)
    os.rename(path, target)
    return target


def run_inbox(schedule: PayoutSchedule, runner: BatchRunner, namespace: str, limits: SafetyLimits,
              read_balances: Callable[[list[str]], Mapping[str, Decimal]],
              alive: Callable[[], object] | None = None) -> list[FileOutcome]:
    """One run of a schedule: files left in processing/ by a crashed run first, then the inbox's finished files."""
    inbox = schedule.inbox
    for sub in (PROCESSING, PROCESSED, REJECTED):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    leftovers = sorted(p for p in (inbox / PROCESSING).iterdir() if p.is_file() and not p.name.startswith("."))
    taken = [p for p in (take(inbox, f) for f in finished_files(inbox, schedule.marker)) if p is not None]
    outcomes = []
    for path in leftovers + taken:
        with structlog.contextvars.bound_contextvars(schedule=schedule.name, file=path.name):
            outcomes.append(_run_file(schedule, runner, namespace, limits, read_balances, inbox, path, alive))
    return outcomes


def _run_file(schedule: PayoutSchedule, runner: BatchRunner, namespace: str, limits: SafetyLimits,
              read_balances: Callable[[list[str]], Mapping[str, Decimal]], inbox: Path, path: Path,
              alive: Callable[[], object] | None) -> FileOutcome:
    data = path.read_bytes()
    payout_file = parse_payout_file(path.name, data, limits)
    plan = runner.plan(payout_file, namespace)
    destination = _free_name(inbox / PROCESSED, path.name)
    report = Path(str(destination) + ".results.csv")
    rows = 0

    def on_row(_: object) -> None:
        nonlocal rows
        rows += 1
        if alive is not None and rows % 10 == 0:
            alive()

    submitted: Submitted = runner.submit(plan, read_balances, allow_partial=schedule.allow_partial,
                                         schedule=schedule.name, report_path=str(report), on_row=on_row)
    if submitted.outcome in (Outcome.ACCEPTED, Outcome.RESUMED):
        os.rename(path, destination)
        moved = destination
        head = runner.batches.get(submitted.batch_id or "")
        if submitted.outcome is Outcome.RESUMED and head is not None and head.report_path != str(report):
            # The same bytes under another name: its batch is the earlier one; report it here too, now if it has
            # ended, else when it ends (the tracker writes every report path of the batch).
            if head.open:
                runner.batches.set(head.batch_id, also_report=sorted({*head.also_report, str(report)}))
                head = runner.batches.get(head.batch_id)
            if head is not None and not head.open:
                write_results(report, runner.results(head.batch_id))
        log.info("inbox_file_accepted", outcome=submitted.outcome.value, batch_id=submitted.batch_id)
        return FileOutcome(path.name, submitted.outcome, submitted.batch_id, moved)
    moved = settle(inbox, path, REJECTED)
    lines = [f"{path.name}: refused ({submitted.outcome.value}); nothing was paid"]
    lines += [f"line {e.line}: {e.field}: {e.reason}" for e in payout_file.errors]
    lines += [f"line {c.row.line}: key: {c.describe()}" for c in plan.conflicts]
    lines += [f"{symbol}: needs {s.need}, available {s.available}, held by other batches {s.reserved}"
              for symbol, s in submitted.shortfalls.items()]
    Path(str(moved) + ".rejected.txt").write_text("\n".join(lines) + "\n")
    log.warning("inbox_file_rejected", outcome=submitted.outcome.value, batch_id=submitted.batch_id)
    return FileOutcome(path.name, submitted.outcome, submitted.batch_id, moved)
