"""What every `bpx-worker` command shares: the exit codes, the consoles, settings, the job store, dates."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
import kombu.exceptions
import redis
from rich.console import Console
from rich.markup import escape

from bpx_worker import logs
from bpx_worker.config import settings as config_settings
from bpx_worker.errors import ConfigurationError, InvalidRequest, ServiceUnavailable
from bpx_worker.jobs.store import RedisJobStore

# The exit codes of every command: one table, mirrored in docs/operators.md ("Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # click uses 2 for bad arguments too
EXIT_NEEDS_REVIEW = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_REFUSED = 6
EXIT_FINDINGS = 7
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE
EXIT_TIMEOUT = 75  # sysexits EX_TEMPFAIL: try again
EXIT_CONFIG = 78  # sysexits EX_CONFIG

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done; `watch` and `submit --wait`: the job succeeded; a batch: every row succeeded",
    EXIT_FAILED: "the job failed (nothing was sent, or the exchange refused it); a batch: some row failed, was "
                 "refused or skipped",
    EXIT_USAGE: "bad input or arguments (a payout file with bad rows too), each field named; nothing was written",
    EXIT_NEEDS_REVIEW: "the job needs a human (the withdrawal may exist); a batch: some row does",
    EXIT_NOT_FOUND: "no such job (or batch)",
    EXIT_CONFLICT: "the idempotency key names a job with a different request (the fields named), or a payout "
                   "file's row keys name other payouts; nothing written",
    EXIT_REFUSED: "refused, the reason printed, nothing done: cancel of a job past its withdrawal request or "
                  "already ended, resolve of a job not needing review or against what the exchange shows, keys "
                  "over an existing pair, a batch over the balance",
    EXIT_FINDINGS: "`audit` found something a human must look at",
    EXIT_UNAVAILABLE: "service unavailable: Redis unreachable, timed out or refused the credentials; "
                      "the exchange's history could not be read; no worker answered a batch's balance read",
    EXIT_SOFTWARE: "unexpected error (a bug): traceback on stderr",
    EXIT_TIMEOUT: "`watch --timeout` ran out, or a running step kept the job busy: try again",
    EXIT_CONFIG: "missing, malformed or contradictory configuration, the variable named (REDIS_URL unset too)",
}

# Which error ends a command with which code (commands handle the others); the first match wins.
ERROR_EXITS: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigurationError, EXIT_CONFIG),
    (ServiceUnavailable, EXIT_UNAVAILABLE),
    # Publishing to the broker, and any Redis error outside the job store (a safety net).
    (kombu.exceptions.OperationalError, EXIT_UNAVAILABLE),
    (redis.ConnectionError, EXIT_UNAVAILABLE),
    (redis.TimeoutError, EXIT_UNAVAILABLE),
    (InvalidRequest, EXIT_USAGE),
)

STATE_EXIT = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "needs_review": EXIT_NEEDS_REVIEW}
STATE_STYLE = {"succeeded": "green", "failed": "red", "needs_review": "yellow", "running": "cyan", "queued": "blue"}

# soft_wrap: a long line is never broken by rich (mid-word or mid-JSON); `display.say` breaks it
# between words on a terminal, a log file keeps it whole. Colours only on a terminal.
console = Console(highlight=False, soft_wrap=True)  # results: stdout
errors = Console(highlight=False, stderr=True, soft_wrap=True)  # errors: stderr, one reason per line


def fail(code: int, message: str) -> NoReturn:
    """One line on stderr (URL passwords hidden), then exit with `code`."""
    errors.print(f"[red]bpx-worker: {escape(logs.hide_credentials(message))}[/red]")
    sys.exit(code)


def settings() -> config_settings.Settings:
    """The settings; ConfigurationError (exit 78 naming the variable) when they are unusable."""
    return config_settings.get()


def store() -> RedisJobStore:
    """The job store for commands: gives up on an unavailable Redis within seconds (exit 69)."""
    from bpx_worker.tasks.app import interactive_job_store

    return interactive_job_store()


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_settings() -> config_settings.Settings:
    """The settings of a command that uses Redis: REDIS_URL must be set, the default is refused (exit 78).

    A command run by hand must not join whatever Redis listens on 127.0.0.1:6379.
    """
    s = settings()
    if not s.redis_url_explicit:
        fail(EXIT_CONFIG, f"REDIS_URL: not set. Commands run by hand do not fall back to {DEFAULT_REDIS_URL}, "
                          f"which may be anyone's Redis; set it, even to that URL "
                          f"(export REDIS_URL={DEFAULT_REDIS_URL})")
    return s


def stamp(ts: float | None, *, date: bool = True) -> str:
    """A Unix time as UTC text with milliseconds: `2025-01-02 10:00:01.123` (or only the time)."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}"


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_moment(text: str, now: float | None = None) -> float:
    """A point in time from the command line, as Unix seconds.

    Accepts Unix seconds (`1735812000`), an ISO 8601 date or date and time (`2025-01-02`,
    `2025-01-02T10:00`, `2025-01-02 10:00:00+02:00`; without a zone: UTC) and a time ago
    (`90s`, `30m`, `24h`, `7d`). Raises ValueError saying what is expected.
    """
    text = text.strip()
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))}).total_seconds()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date: use 2025-01-02, 2025-01-02T10:00 (UTC unless a zone "
                         f"is given), Unix seconds, or a time ago such as 24h or 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Moment(click.ParamType):
    """A click parameter for `parse_moment`."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
