"""`bpx-worker batch ...`: submit a payout file as a batch, follow it, report on it, from any machine with Redis.

The submitting machine needs no API secret: the balance for a dry run or the
balance check is read by a worker and comes back through Redis.

Exit codes: the one table of every command (`EXIT_CODES`, common.py), where
each code also says what it means for a batch.
"""

from __future__ import annotations

import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bpx_worker import logs
from bpx_worker.config import settings as config_settings
from bpx_worker.errors import BalanceUnavailable, ConfigurationError
from bpx_worker.interfaces.common import (
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NEEDS_REVIEW,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)

console = Console(highlight=False)
STYLE = {"succeeded": "green", "failed": "red", "needs_review": "yellow", "refused": "red", "invalid": "red",
         "in_flight": "cyan"}


def _settings() -> config_settings.Settings:
    try:
        return config_settings.get()
    except ConfigurationError as exc:
        console.print(f"[red]{exc}[/red]")
        sys.exit(EXIT_CONFIG)


def _amount(value: Decimal) -> str:
    from bpx_worker.batches.payout_file import plain

    return plain(value)


def read_balances_through_worker(symbols: list[str]) -> dict[str, Decimal]:
    """Ask a worker to read the balances (it holds the API secret) and wait for its answer in Redis."""
    from bpx_worker.tasks.batches import batch_store, read_balances

    timeout = config_settings.get().batch_balance_timeout
    request_id = uuid.uuid4().hex
    read_balances.apply_async((request_id, list(symbols)))
    answer = batch_store().wait_balances(request_id, timeout)
    if answer is None:
        raise BalanceUnavailable(f"no worker answered the balance read within {timeout:g}s; is a worker running?")
    if "error" in answer:
        raise BalanceUnavailable(f"the worker could not read the balance: {answer['error']}")
    return {symbol: Decimal(amount) for symbol, amount in answer["balances"].items()}


@click.group(name="batch")
def batch() -> None:
    """Payout files as batches: submit (with a dry run), follow, status, list, report."""
    # The console is for the operator; only warnings and errors are logged (to stderr).
    logs.configure("WARNING", _settings().log_format)


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--namespace", help="The payout program; row idempotency keys are <namespace>:<key> "
              "(default BATCH_NAMESPACE).")
@click.option("--format", "file_format", type=click.Choice(["csv", "jsonl"]), help="Default: from the file name.")
@click.option("--dry-run", is_flag=True, help="Print what would be paid and the balance; submit nothing.")
@click.option("--skip-invalid", is_flag=True, help="Submit the good rows; list the bad ones and refused keys.")
@click.option("--allow-partial", is_flag=True, help="Submit even when the total exceeds the available balance.")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Results CSV (default: FILE.results.csv).")
@click.option("--wait/--no-wait", default=True, help="Follow the batch to its end (default) or return at once.")
def submit(file: Path, namespace: str | None, file_format: str | None, dry_run: bool, skip_invalid: bool,
           allow_partial: bool, results_path: Path | None, wait: bool) -> None:
    """Validate a payout file, check it against the balance, submit its rows and follow them to the end."""
    from bpx_worker.batches.payout_file import parse_payout_file
    from bpx_worker.batches.runner import Outcome
    from bpx_worker.tasks.batches import batch_runner, limits

    s = _settings()
    namespace = namespace or s.batch_namespace
    payout_file = parse_payout_file(file.name, file.read_bytes(), limits(s), file_format)  # type: ignore[arg-type]
    console.print(f"file [bold]{file.name}[/bold]  {payout_file.format}, {len(payout_file.rows)} valid rows, "
                  f"{len(payout_file.bad_lines)} bad  sha256 {payout_file.sha256[:16]}  namespace {namespace}")
    if payout_file.errors:
        _print_errors(payout_file.errors)
        if not skip_invalid:
            console.print("[red]refused: the file has bad rows; nothing was submitted[/red] "
                          "(fix them, or --skip-invalid to submit the good rows)")
            sys.exit(EXIT_USAGE)
    runner = batch_runner()
    plan = runner.plan(payout_file, namespace)
    if plan.conflicts:
        for conflict in plan.conflicts:
            console.print(f"  [red]line {conflict.row.line}[/red]: {conflict.describe()}")
        if not skip_invalid:
            console.print("[red]refused: row keys already paid a different payout; nothing was submitted[/red]")
            sys.exit(EXIT_CONFLICT)
    for paid in plan.already:
        console.print(f"  line {paid.row.line}: key {paid.row.key!r} {paid.describe()}; nothing new is paid")
    if plan.earlier is not None and plan.earlier.state.value != "refused":
        console.print(f"this file was accepted before as batch [bold]{plan.earlier.batch_id}[/bold] "
                      f"({plan.earlier.state.value}); it is resumed, rows already submitted are not paid again")
    if dry_run:
        sys.exit(_dry_run(plan))
    try:
        submitted = runner.submit(plan, read_balances_through_worker, skip_invalid=skip_invalid,
                                  allow_partial=allow_partial)
    except BalanceUnavailable as exc:
        console.print(f"[red]{exc}; nothing was submitted[/red]")
        sys.exit(EXIT_UNAVAILABLE)
    if submitted.outcome is Outcome.OVER_BALANCE:
        _print_balance(plan.needs, {k: v.available for k, v in submitted.shortfalls.items()},
                       {k: v.reserved for k, v in submitted.shortfalls.items()})
        console.print(f"[red]refused: the batch needs more than is available; nothing was sent[/red] "
                      f"(batch {submitted.batch_id}, --allow-partial to send anyway)")
        sys.exit(EXIT_REFUSED)
    batch_id = submitted.batch_id or ""
    console.print(f"batch [bold]{batch_id}[/bold] {submitted.outcome.value}")
    if not wait:
        sys.exit(EXIT_OK)
    sys.exit(follow(batch_id, results_path or file.with_name(file.name + ".results.csv")))


@batch.command()
@click.argument("batch_id")
@click.option("--follow", "follow_it", is_flag=True, help="Follow it to its end with a progress bar.")
def status(batch_id: str, follow_it: bool) -> None:
    """A batch: where it came from, its state, rows per state and totals per symbol."""
    from bpx_worker.batches.report import summarize
    from bpx_worker.tasks.batches import batch_runner

    _settings()
    runner = batch_runner()
    head = runner.batches.get(batch_id)
    if head is None:
        console.print(f"[red]no batch {batch_id}[/red]")
        sys.exit(EXIT_NOT_FOUND)
    console.print(f"batch [bold]{head.batch_id}[/bold]  state {head.state.value}  file {head.source} "
                  f"(sha256 {head.sha256[:16]})  namespace {head.namespace}"
                  + (f"  schedule {head.schedule}" if head.schedule else ""))
    console.print(f"  created {_when(head.created_at)}" + (f"  finished {_when(head.finished_at)}"
                                                            if head.finished_at else ""))
    if head.refusal:
        console.print(f"  [red]refused: {head.refusal}[/red]")
    if follow_it and head.open:
        sys.exit(follow(batch_id, None))
    summary = summarize(runner.results(batch_id))
    _print_summary(summary)
    sys.exit(_exit_code(summary) if not head.open else EXIT_OK)


@batch.command(name="list")
@click.option("--limit", default=20, show_default=True, help="How many of the newest batches.")
def list_batches(limit: int) -> None:
    """The newest batches."""
    from bpx_worker.tasks.batches import batch_runner

    _settings()
    table = Table("batch", "created", "state", "file", "rows", "namespace", "schedule", box=None, pad_edge=False)
    for head in batch_runner().batches.recent(limit):
        table.add_row(head.batch_id, _when(head.created_at), head.state.value, head.source, str(head.rows),
                      head.namespace, head.schedule or "")
    console.print(table)


@batch.command()
@click.argument("batch_id")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: BATCH_ID.results.csv")
def report(batch_id: str, output: Path | None) -> None:
    """Write the batch's results file (line, row key, job id, state, withdrawal id, error code) again."""
    from bpx_worker.batches.report import summarize, write_results
    from bpx_worker.tasks.batches import batch_runner

    _settings()
    runner = batch_runner()
    if runner.batches.get(batch_id) is None:
        console.print(f"[red]no batch {batch_id}[/red]")
        sys.exit(EXIT_NOT_FOUND)
    results = runner.results(batch_id)
    path = write_results(output or Path(f"{batch_id}.results.csv"), results)
    summary = summarize(results)
    _print_summary(summary)
    console.print(f"results written to {path}")
    sys.exit(_exit_code(summary))


# --- following ---------------------------------------------------------------------------------


def follow(batch_id: str, results_path: Path | None, out: Console | None = None, interval: float = 0.5) -> int:
    """A live progress bar of the batch's job states until every row has ended; then the summary and results."""
    from bpx_worker.batches.report import summarize, write_results
    from bpx_worker.tasks.batches import batch_runner

    out = out or console
    runner = batch_runner()
    head = runner.batches.get(batch_id)
    if head is None:
        out.print(f"[red]no batch {batch_id}[/red]")
        return EXIT_NOT_FOUND
    results = runner.results(batch_id)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[states]}"), TimeElapsedColumn(), console=out, transient=False)
    last_line = 0.0
    with progress:
        task = progress.add_task(f"batch {batch_id}", total=len(results), states="")
        while True:
            results = runner.results(batch_id)
            summary = summarize(results)
            states = "  ".join(f"[{STYLE[name]}]{name} {summary.counts[name]}[/]" for name in STYLE
                               if summary.counts[name])
            progress.update(task, total=summary.rows, completed=summary.ended, states=states)
            if not out.is_terminal and time.monotonic() - last_line > 5:
                last_line = time.monotonic()
                out.print(f"  {summary.ended}/{summary.rows} ended  " + states)
            head = runner.batches.get(batch_id) or head
            # The batch has ended when its tracker says so: every row's end recorded, its reservation released.
            if head.state.value in ("ended", "refused"):
                break
            time.sleep(interval)
    _print_summary(summary, out)
    if results_path is not None:
        path = write_results(results_path, results)
        out.print(f"results written to {path}")
    return _exit_code(summary)


def _exit_code(summary: Any) -> int:
    if summary.all_succeeded:
        return EXIT_OK
    if summary.counts["needs_review"]:
        return EXIT_NEEDS_REVIEW
    return EXIT_FAILED


# --- display -----------------------------------------------------------------------------------


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z" if at else ""


def _print_errors(errors: list[Any]) -> None:
    table = Table("line", "field", "reason", box=None, pad_edge=False, title="bad rows")
    for error in errors:
        table.add_row(str(error.line), error.field, error.reason)
    console.print(table)


def _print_summary(summary: Any, out: Console | None = None) -> None:
    out = out or console
    counts = Table("rows", *[name.replace("_", " ") for name in STYLE], "already paid before", box=None,
                   pad_edge=False, title="summary")
    counts.add_row(str(summary.rows), *[str(summary.counts[name]) for name in STYLE], str(summary.already_paid))
    out.print(counts)
    totals = Table("symbol", "requested", "succeeded", "failed", "needs review", "not paid (refused/invalid)",
                   "in flight", box=None, pad_edge=False, title="totals per symbol")
    for symbol, amounts in summary.per_symbol.items():
        def amount(*names: str, amounts: dict[str, Decimal] = amounts) -> str:
            return _amount(sum((amounts.get(n, Decimal(0)) for n in names), Decimal(0)))

        totals.add_row(symbol, amount("requested"), amount("succeeded"), amount("failed"), amount("needs_review"),
                       amount("refused", "invalid"), amount("in_flight"))
    out.print(totals)


def _print_balance(needs: dict[str, Decimal], available: dict[str, Decimal], reserved: dict[str, Decimal]) -> None:
    table = Table("symbol", "to pay", "available", "held by other batches", "free after", "", box=None,
                  pad_edge=False, title="balance")
    for symbol, need in needs.items():
        have, held = available.get(symbol, Decimal(0)), reserved.get(symbol, Decimal(0))
        fits = need <= have - held
        table.add_row(symbol, _amount(need), _amount(have), _amount(held), _amount(have - held - need),
                      "[green]fits[/green]" if fits else "[red]does not fit[/red]")
    console.print(table)


def _dry_run(plan: Any) -> int:
    from bpx_worker.tasks.batches import batch_store

    rows = Table("line", "key", "symbol", "blockchain", "address", "quantity", "", box=None, pad_edge=False,
                 title="rows")
    already = {a.row.line for a in plan.already}
    conflicts = {c.row.line for c in plan.conflicts}
    for row in plan.file.rows:
        note = "already paid" if row.line in already else "refused (key)" if row.line in conflicts else "to pay"
        r = row.request
        rows.add_row(str(row.line), row.key, r.symbol, r.blockchain, r.address, _amount(r.quantity), note)
    console.print(rows)
    needs = plan.needs
    if plan.earlier is not None and plan.earlier.state.value != "refused":
        console.print("dry run: a resubmission of an accepted batch pays nothing new; nothing was submitted")
        return EXIT_OK
    if not needs:
        console.print("dry run: nothing to pay; nothing was submitted")
        return EXIT_OK
    try:
        available = read_balances_through_worker(sorted(needs))
    except BalanceUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        return EXIT_UNAVAILABLE
    reserved = batch_store().reserved(sorted(needs))
    _print_balance(needs, available, reserved)
    fits = all(need <= available.get(s, Decimal(0)) - reserved.get(s, Decimal(0)) for s, need in needs.items())
    console.print(f"dry run: {len(plan.new)} rows would be paid, {len(plan.already)} were paid before"
                  + ("" if fits else "; [red]the batch would be refused: over the available balance[/red]")
                  + "; nothing was submitted")
    return EXIT_OK if fits else EXIT_REFUSED
