"""`bpx-worker`: submit withdrawals, inspect and follow jobs, start the worker and Flower.

Results go to stdout, errors to stderr as one line (no traceback), and the exit
code says what happened: see `EXIT_CODES` (`common.py`), mirrored in docs/operators.md.
The operators' commands live in `ops_cli.py` and are registered here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console

from bpx_worker import logs
from bpx_worker.errors import (
    ConfigurationError,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
)
from bpx_worker.interfaces import ops_cli
from bpx_worker.interfaces.common import (
    ERROR_EXITS,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    STATE_EXIT,
    console,
    errors,
    fail,
    redis_settings,
)
from bpx_worker.interfaces.common import settings as _settings
from bpx_worker.interfaces.common import store as _store
from bpx_worker.interfaces.display import follow as _follow
from bpx_worker.interfaces.display import show
from bpx_worker.interfaces.serve import serve


def _exit_for(exc: BaseException) -> int | None:
    return next((code for kind, code in ERROR_EXITS if isinstance(exc, kind)), None)


class _Commands(click.Group):
    """Turns the errors of every command into one line on stderr and the exit code of `ERROR_EXITS`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except InvalidRequest as exc:
            _refused(exc)
        except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
            code = _exit_for(exc)
            if code is None:
                sys.stderr.write(logs.hide_credentials(traceback.format_exc()))
                fail(EXIT_SOFTWARE, f"unexpected error: {type(exc).__name__}: {exc}")
            fail(code, str(exc) or type(exc).__name__)


@click.group(cls=_Commands)
@click.version_option(package_name="backpack-withdrawal-worker", prog_name="bpx-worker")
def main() -> None:
    """Run and inspect Backpack balance-checked withdrawals."""


def _request_options(key_help: str) -> Callable[[Any], Any]:
    """The options of one withdrawal request, shared by `submit` and `run-inprocess`."""
    options = [
        click.option("--symbol", required=True, help="Asset to withdraw, e.g. USDC."),
        click.option("--blockchain", required=True, help="Blockchain, e.g. Solana."),
        click.option("--address", required=True, help="Destination address (2FA-exempt in the address book)."),
        click.option("--quantity", required=True, help="Decimal string, e.g. 12.5."),
        click.option("--idempotency-key", help=key_help),
        click.option("--two-factor-token", envvar="BPX_TWO_FACTOR_TOKEN",
                     help="Read from BPX_TWO_FACTOR_TOKEN if unset."),
        click.option("--window", help="X-Window in ms (1-60000)."),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _refused(exc: InvalidRequest) -> NoReturn:
    errors.print("[red]refused, nothing was written:[/red]")
    for name, reason in exc.errors.items():
        errors.print(f"  {name}: {reason}")
    sys.exit(EXIT_USAGE)


@main.command()
@_request_options("Same key and request, same job: a repeat never withdraws twice; the same key with "
                  "another request is refused (exit 5).")
@click.option("--wait/--no-wait", default=False, help="Follow the job until it ends.")
def submit(symbol, blockchain, address, quantity, idempotency_key, two_factor_token, window, wait) -> None:
    """Validate and enqueue one withdrawal; prints the job id."""
    from bpx_worker.interfaces.api import submit_withdrawal

    redis_settings()
    try:
        job_id = submit_withdrawal(symbol, blockchain, address, quantity, idempotency_key=idempotency_key,
                                   two_factor_token=two_factor_token, window=window, store=_store())
    except InvalidRequest as exc:
        _refused(exc)
    except IdempotencyConflict as exc:
        errors.print(f"[red]refused, nothing was written: idempotency key {exc.idempotency_key} already belongs "
                     f"to job {exc.job_id}, whose request differs:[/red]")
        for name, (theirs, ours) in exc.differences.items():
            errors.print(f"  {name}: the job has {_shown(theirs)}, this request has {_shown(ours)}")
        sys.exit(EXIT_CONFLICT)
    click.echo(job_id)
    if wait:
        sys.exit(follow(job_id))


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw record.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's record: state, times, steps, outputs, error, resolution, what it waits on."""
    from bpx_worker.interfaces.api import get_job

    redis_settings()
    try:
        record = get_job(job_id, store=_store())
    except JobNotFound as exc:
        fail(EXIT_NOT_FOUND, str(exc))
    if as_json:
        click.echo(json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        waiting = any(step.waiting_on for step in record.steps.values())
        show(record, pause=_store().sending_paused() if waiting else None)


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Give up after this many seconds (exit 75) if the job has not ended.")
def watch(job_id: str, timeout: float | None) -> None:
    """Print each event of a job at the time it happened, until it ends.

    A finished job is replayed with its events' own times. Exit 0 succeeded, 1 failed,
    3 needs review, 4 no such job, 75 timed out.
    """
    redis_settings()
    sys.exit(follow(job_id, timeout=timeout))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, help="Pool slots (default WORKER_CONCURRENCY, else 32 threads).")
@click.option("--pool", "-P", type=click.Choice(["threads", "prefork", "solo"]),
              help="Celery pool (default WORKER_POOL, threads).")
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (the sweep of stalled jobs); "
              "for a single-worker deployment, otherwise run `celery -A bpx_worker.tasks.app beat` once.")
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, pool: str | None, beat: bool) -> None:
    """Start a Celery worker for the withdrawal queues (extra options go to celery).

    Refuses to start (exit 78, naming the variable) without usable settings and keys.
    """
    from bpx_worker.tasks.app import app, check_worker_config

    s = redis_settings()
    check_worker_config()
    pool = pool or s.worker_pool
    # Also in the app's configuration: Celery reads `--pool prefork`, its CLI default, as "not given".
    app.conf.worker_pool = pool
    argv = ["worker", "--loglevel", s.log_level, "--pool", pool,
            "--concurrency", str(concurrency or s.concurrency(pool))]
    if beat:
        argv.append("--beat")
    # app.start returns the worker's exit code (worker_main would drop it).
    sys.exit(app.start(argv + list(ctx.args)) or EXIT_OK)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", envvar="FLOWER_ADDRESS", default="127.0.0.1", show_default=True,
              help="Address to listen on (FLOWER_ADDRESS).")
@click.option("--port", envvar="FLOWER_PORT", type=int, default=5555, show_default=True, help="FLOWER_PORT.")
@click.option("--generate-auth", is_flag=True, help="Without FLOWER_BASIC_AUTH, make a login and print it on stderr.")
@click.option("--no-auth", is_flag=True, help="Run without a login (a trusted, single-user machine only).")
@click.pass_context
def flower(ctx: click.Context, address: str, port: int, generate_auth: bool, no_auth: bool) -> None:
    """Start Flower on 127.0.0.1 with a login (extra options go to flower).

    The login comes from FLOWER_BASIC_AUTH (user:password[,user:password]); without it
    Flower does not start (exit 78) unless --generate-auth or --no-auth says otherwise.
    """
    redis_settings()
    login = _flower_login(os.environ.get("FLOWER_BASIC_AUTH"), generate_auth, no_auth)
    if importlib.util.find_spec("flower") is None:
        fail(EXIT_UNAVAILABLE, "flower is not installed (pip install 'backpack-withdrawal-worker[flower]')")
    env = dict(os.environ)
    env.pop("FLOWER_BASIC_AUTH", None)
    if login:
        env["FLOWER_BASIC_AUTH"] = login  # the environment, not argv: `ps` shows argv to everyone
    argv = [sys.executable, "-m", "celery", "-A", "bpx_worker.tasks.app", "flower",
            f"--address={address}", f"--port={port}", *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 - argv is ours; replacing this process is the point


def _flower_login(configured: str | None, generate: bool, none: bool) -> str | None:
    """The basic-auth login Flower will ask for; ConfigurationError when there is none and none was asked for."""
    if configured:
        for pair in configured.split(","):
            user, _, password = pair.partition(":")
            if not user.strip() or not password:
                raise ConfigurationError("FLOWER_BASIC_AUTH: expected user:password[,user:password]")
        return configured
    if os.environ.get("FLOWER_AUTH_PROVIDER") or none:
        if none:
            errors.print("[yellow]Flower runs without a login (--no-auth)[/yellow]")
        return None
    if generate:
        login = f"ops:{secrets.token_urlsafe(18)}"
        errors.print(f"Flower login (generated, shown once): {login}")
        return login
    raise ConfigurationError(
        "FLOWER_BASIC_AUTH: not set; set it to user:password, or pass --generate-auth "
        "(or --no-auth on a trusted machine)"
    )


@main.command(name="workflow")
def show_workflow() -> None:
    """Show the workflow as the worker runs it: each step, its policy, and any setting overriding the document."""
    from bpx_worker.arazzo import withdrawal_workflow
    from bpx_worker.engine.engine import is_at_most_once
    from bpx_worker.withdrawal.rules import workflow_rules
    from bpx_worker.withdrawal.runtime import with_settings

    s = _settings()
    workflow = with_settings(withdrawal_workflow(), s)
    rules = workflow_rules(s.max_quantity, s.allowed_destinations)
    console.print(f"workflow [bold]{workflow.workflow_id}[/bold]")
    for step in workflow.steps:
        op = step.operation
        console.print(f"  [bold]{step.step_id}[/bold]  {op.method} {op.path}  ({op.operation_id})")
        if is_at_most_once(step):
            lookup = rules.lookup.get(op.operation_id)
            how = f"looked up by {lookup.key} via {lookup.operation_id}" if lookup else "never looked up"
            console.print(f"    sent at most once; an answer lost in transit is {how}, never re-sent")
        for action in step.retry_actions:
            override = action.overridden_by
            note = f"  (document: {action.retry_after:g}s, {action.retry_limit}; set by {override.source})" \
                if override else "  (as the document says)"
            console.print(f"    polled: first after {action.effective_retry_after:g}s, at most "
                          f"{action.effective_retry_limit} polls, until {s.reconcile_deadline:g}s{note}")
        for table, what in ((rules.after, "checked after"), (rules.before_send, "checked before sending"),
                            (rules.settlement, "statuses settle"), (rules.keep, "record keeps part of outputs")):
            if op.operation_id in table:
                console.print(f"    rule: {what}")


@main.command(name="run-inprocess")
@_request_options("The clientId is derived from it (a fresh one when unset).")
@click.option("--seed-only", is_flag=True, help="Run the seed document as published, without the worker's additions.")
def run_inprocess(symbol, blockchain, address, quantity, idempotency_key, two_factor_token, window, seed_only) -> None:
    """Run the whole workflow in this process (no Celery, no Redis) and print its outputs.

    The request is validated exactly as `submit` validates it (exit 2, nothing
    sent); logs go to stderr, the JSON result to stdout.
    """
    import uuid

    from bpx_worker.exchange import twofactor
    from bpx_worker.interfaces.api import validate_withdrawal
    from bpx_worker.withdrawal.runtime import run_withdrawal_inprocess

    s = _settings()
    logs.configure(s.log_level, s.log_format)
    try:
        request = validate_withdrawal(symbol, blockchain, address, quantity, idempotency_key=idempotency_key,
                                      two_factor_token=two_factor_token, window=window, settings=s)
    except InvalidRequest as exc:
        _refused(exc)
    sealed = None
    if request.two_factor_token is not None:
        # Sealed as submit seals it; the engine opens it right before the withdrawal request.
        sealed = twofactor.seal(request.two_factor_token.get_secret_value(), s.api_key())
    result = run_withdrawal_inprocess(s, request.public_inputs(), request.idempotency_key or uuid.uuid4().hex,
                                      seed_only=seed_only, sealed_2fa=sealed)
    click.echo(json.dumps(result.model_dump(mode="json", include={"state", "outputs", "error"}), indent=2))
    sys.exit(STATE_EXIT.get(result.state, EXIT_FAILED))


def follow(job_id: str, out: Console | None = None, timeout: float | None = None) -> int:
    """Print each event of the job at the time it happened until it ends; the exit code of its final state."""
    return _follow(_store(), job_id, out, timeout)


main.add_command(ops_cli.jobs)
main.add_command(ops_cli.resolve)
main.add_command(ops_cli.pause)
main.add_command(ops_cli.resume)
main.add_command(ops_cli.cancel)
main.add_command(ops_cli.audit)
main.add_command(ops_cli.keys)


from bpx_worker.interfaces.batch_cli import batch  # noqa: E402 - the `batch` group, registered below

main.add_command(batch)
main.add_command(serve)

if __name__ == "__main__":
    main()
