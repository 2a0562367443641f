"""The operators' commands of `bpx-worker`: jobs, resolve, pause, resume, cancel, audit, keys.

Each is registered on the main group in `cli.py`. None of them sends a request that
moves money; `resolve` and `audit` read the exchange's withdrawal history, so they
need the API keys (BACKPACK_API_KEY[_FILE], BACKPACK_API_SECRET[_FILE]).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bpx_worker import logs
from bpx_worker.errors import ConfigurationError, ExchangeError
from bpx_worker.interfaces import display, operations
from bpx_worker.interfaces.common import (
    EXIT_CONFIG,
    EXIT_FINDINGS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    Moment,
    console,
    errors,
    fail,
    redis_settings,
    stamp,
)
from bpx_worker.interfaces.common import store as _store
from bpx_worker.withdrawal.audit import TITLES

OUTCOME_EXIT = {"done": EXIT_OK, "not_found": EXIT_NOT_FOUND, "refused": EXIT_REFUSED, "busy": EXIT_TIMEOUT}
BY_HELP = "Who acts (kept in the record and the operators' log); default: your login name."


def _exchange() -> Any:
    """The signed exchange client: reads need the API keys (exit 78 naming the variable without them)."""
    from bpx_worker.exchange.client import BackpackClient
    from bpx_worker.exchange.signer import Signer

    s = redis_settings()
    logs.configure(s.log_level, s.log_format)  # to stderr: stdout holds the command's answer
    try:
        return BackpackClient.from_settings(s, Signer.from_secret(s.api_key(), s.api_secret()))
    except ConfigurationError as exc:
        fail(EXIT_CONFIG, f"{exc} (this command reads the exchange's withdrawal history: it needs the API keys)")


def _workflow() -> Any:
    from bpx_worker.arazzo import withdrawal_workflow

    return withdrawal_workflow()


def _report(outcome: operations.Outcome) -> int:
    if outcome.done:
        display.say(console, outcome.message, indent="  ")
    else:
        display.say(errors, outcome.message, "red", indent="  ")
    return OUTCOME_EXIT[outcome.kind]


# --- jobs --------------------------------------------------------------------------------------


@click.command(name="jobs")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "needs_review"]),
              help="Only jobs in this state.")
@click.option("--since", type=Moment(), help="Created at or after: 2025-01-02, 2025-01-02T10:00 (UTC), 24h, 7d.")
@click.option("--until", type=Moment(), help="Created at or before.")
@click.option("--batch", "batch_id", help="Only the jobs of this batch.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="Show the newest N.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def jobs(state: str | None, since: float | None, until: float | None, batch_id: str | None, limit: int,
         as_json: bool) -> None:
    """List jobs with their state, error code and clientId, oldest first."""
    redis_settings()
    store = _store()
    found = list(store.jobs(since=since, until=until, state=state, batch_id=batch_id))
    shown = found[-limit:]
    if as_json:
        for record in shown:
            click.echo(json.dumps(display.job_summary(record), sort_keys=True))
        return
    pause = store.sending_paused()
    if pause is not None:
        display.say(console, f"sending is paused since {stamp(pause.at)} UTC by {pause.by}: {pause.reason}",
                    "yellow", indent="  ")
    for record in shown:
        for line in display.job_lines(record):
            display.say(console, line)
    more = f" (the newest {len(shown)} shown)" if len(shown) < len(found) else ""
    console.print(f"{len(found)} job{'s' if len(found) != 1 else ''}{more}")


# --- resolve -----------------------------------------------------------------------------------


@click.command(name="resolve")
@click.argument("job_id")
@click.option("--as", "outcome", type=click.Choice(["succeeded", "failed"]), required=True,
              help="The decision: succeeded (the exchange shows this job's withdrawal) or failed (it shows none).")
@click.option("--note", required=True, help="Why: kept in the record and its events.")
@click.option("--withdrawal-id", help="For --as succeeded when the exchange shows several: which one.")
@click.option("--by", help=BY_HELP)
def resolve(job_id: str, outcome: str, note: str, withdrawal_id: str | None, by: str | None) -> None:
    """Record a human decision on a needs_review job; sends nothing.

    The withdrawal is first looked up at the exchange by the job's clientId (a signed
    read: the API keys are needed). --as succeeded needs the withdrawal found and records
    its id; --as failed is refused while the exchange shows one. Exit 0 recorded, 4 no such
    job, 6 refused, 69 the exchange could not be read.
    """
    s = redis_settings()
    client = _exchange()
    try:
        result = operations.resolve(_store(), client, _workflow(), job_id, outcome=outcome,  # type: ignore[arg-type]
                                    note=note, by=operations.operator(by), lease_ttl=s.lease_ttl,
                                    withdrawal_id=withdrawal_id)
    except ExchangeError as exc:
        fail(EXIT_UNAVAILABLE, f"cannot read the exchange's withdrawal history: {exc}; nothing was recorded")
    finally:
        client.close()
    sys.exit(_report(result))


# --- the kill switch ---------------------------------------------------------------------------


@click.command(name="pause")
@click.option("--reason", "-r", required=True, help="Why: kept with the switch and in the operators' log.")
@click.option("--by", help=BY_HELP)
def pause(reason: str, by: str | None) -> None:
    """Stop every worker from sending new withdrawal requests, at once.

    Reads, reconciliation polls and lookups of requests already sent go on; a job about
    to send waits (`status` shows it) until `bpx-worker resume`.
    """
    redis_settings()
    current, newly = _store().pause_sending(operations.operator(by), reason)
    if newly:
        display.say(console, f"paused at {stamp(current.at)} UTC by {current.by}: no worker sends a new withdrawal "
                             "request until `bpx-worker resume`", indent="  ")
    else:
        display.say(console, f"already paused since {stamp(current.at)} UTC by {current.by}: {current.reason}",
                    indent="  ")


@click.command(name="resume")
@click.option("--reason", "-r", required=True, help="Why: kept in the operators' log.")
@click.option("--by", help=BY_HELP)
def resume(reason: str, by: str | None) -> None:
    """Lift the kill switch: waiting jobs send their withdrawal requests at their next check (seconds)."""
    redis_settings()
    lifted = _store().resume_sending(operations.operator(by), reason)
    if lifted is None:
        display.say(console, "sending was not paused; nothing to resume")
    else:
        display.say(console, f"resumed: the pause set at {stamp(lifted.at)} UTC by {lifted.by} ({lifted.reason}) "
                             "is lifted", indent="  ")


# --- cancel ------------------------------------------------------------------------------------


@click.command(name="cancel")
@click.argument("job_ids", nargs=-1)
@click.option("--batch", "batch_id", help="Cancel every unfinished job of this batch.")
@click.option("--reason", "-r", default="cancelled by an operator", show_default=True, help="Why.")
@click.option("--by", help=BY_HELP)
def cancel(job_ids: tuple[str, ...], batch_id: str | None, reason: str, by: str | None) -> None:
    """End jobs that have not reached their withdrawal request: `failed`, code CANCELLED.

    A job whose withdrawal request may have reached the exchange cannot be cancelled, and
    says so (exit 6); 4 no such job; 75 a running step kept the job busy.
    """
    s = redis_settings()
    if not job_ids and batch_id is None:
        raise click.UsageError("name a job, or --batch ID")
    store = _store()
    targets = list(job_ids)
    if batch_id is not None:
        batch = [r.job_id for r in store.jobs(batch_id=batch_id) if not r.terminal]
        if not batch and not job_ids:
            display.say(console, f"no unfinished job in batch {batch_id}")
        targets += batch
    who, workflow, worst = operations.operator(by), _workflow(), EXIT_OK
    for job_id in targets:
        code = _report(operations.cancel(store, workflow, job_id, by=who, reason=reason, lease_ttl=s.lease_ttl))
        worst = max(worst, code)
    sys.exit(worst)


# --- audit -------------------------------------------------------------------------------------


@click.command(name="audit")
@click.option("--since", type=Moment(), required=True, help="From: 2025-01-02, 2025-01-02T10:00 (UTC), 24h, 7d.")
@click.option("--until", type=Moment(), help="To (default: now).")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def audit(since: float, until: float | None, as_json: bool) -> None:
    """Compare the exchange's withdrawal history with the job records (by clientId).

    Reports withdrawals without a job, jobs whose record disagrees with the exchange
    (status, quantity, address, symbol, blockchain) and jobs the exchange does not know.
    A signed read: the API keys are needed. Exit 0 nothing found, 7 findings, 69 the
    exchange could not be read.
    """
    redis_settings()
    end = until if until is not None else time.time()
    client = _exchange()
    try:
        report = operations.audit(_store(), client, _workflow(), since, end)
    except ExchangeError as exc:
        fail(EXIT_UNAVAILABLE, f"cannot read the exchange's withdrawal history: {exc}")
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps({
            "since": since, "until": end, "withdrawals": report.withdrawals, "jobs": report.jobs,
            "findings": [vars(f) for f in report.entries]}, default=str, sort_keys=True))
    else:
        display.say(console, f"audit {stamp(since)} .. {stamp(end)} UTC: {report.withdrawals} withdrawals at the "
                             f"exchange, {report.jobs} jobs created", indent="  ")
        for kind, title in TITLES.items():
            entries = report.of(kind)
            if entries:
                display.say(console, f"{title} ({len(entries)}):", indent="  ")
                for f in entries:
                    job = f"job {f.job_id}: " if f.job_id else ""
                    display.say(console, f"  {job}{f.message}", indent="    ")
        findings = len(report.findings)
        display.say(console, f"{findings} finding{'s' if findings != 1 else ''}" if findings else "nothing found")
    sys.exit(EXIT_FINDINGS if report.findings else EXIT_OK)


# --- keys --------------------------------------------------------------------------------------

SECRET_FILE = "backpack-api-secret"  # noqa: S105 - a file name, not a secret
KEY_FILE = "backpack-api-key"


@click.group(name="keys")
def keys() -> None:
    """API key pairs."""


@keys.command(name="generate")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("secrets"),
              show_default=True, help="Where to write the pair (created with mode 0700).")
@click.option("--force", is_flag=True, help="Replace an existing pair.")
def generate(directory: Path, force: bool) -> None:
    """Write a new ED25519 key pair: the secret (mode 0600) and the public key.

    Prints the environment to set on stdout (`eval "$(bpx-worker keys generate)"`), notes
    on stderr. For the sandbox and docker-compose; for the real exchange, register the
    public key with Backpack. Exit 6 when a pair exists and --force is not given.
    """
    from bpx_worker.exchange.signer import Signer

    secret_path, key_path = directory / SECRET_FILE, directory / KEY_FILE
    existing = [str(p) for p in (secret_path, key_path) if p.exists()]
    if existing and not force:
        fail(EXIT_REFUSED, f"{', '.join(existing)} already exist; pass --force to replace the pair")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer, secret = Signer.generate()
    _write(secret_path, secret + "\n", 0o600)
    _write(key_path, signer.api_key + "\n", 0o644)
    display.say(errors, f"wrote {secret_path} (mode 0600; the secret, never share it) and {key_path} (the public key)",
                indent="  ")
    display.say(errors, f"the sandbox takes the public key: python -m devtools.sandbox --api-key-file "
                        f"{key_path.resolve()}", indent="  ")
    click.echo(f"export BACKPACK_API_KEY_FILE={key_path.resolve()}")
    click.echo(f"export BACKPACK_API_SECRET_FILE={secret_path.resolve()}")


def _write(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` with `mode`, atomically: the file never exists with other permissions."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

