"""How `status`, `watch` and `jobs` print a job: lines that read well at 80 columns and in a log file.

Times are UTC with milliseconds. Written to a file or a pipe, a line is never
broken (a log file keeps each event on one line, JSON whole); on a terminal, a
line too long for it breaks between words (`say`), never inside one.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from bpx_worker.interfaces.common import (
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    STATE_EXIT,
    STATE_STYLE,
    console,
    errors,
    stamp,
)
from bpx_worker.jobs.record import JobRecord, StepRecord
from bpx_worker.jobs.store import Pause, RedisJobStore

# Event fields printed after the event's name and step, in this order; the message comes last. The
# state and the error code speak for themselves: printed bare, so an ended job's line fits 80 columns.
_BARE_FIELDS = ("state", "code")
_EVENT_FIELDS = ("status_code", "attempt", "status", "found", "on", "by", "withdrawal_id")
WIDTH = 80
EVENT_INDENT = " " * 15  # a wrapped event line continues under its name, after the time


def say(out: Console, text: str, style: str | None = None, indent: str = "      ") -> None:
    """Print one line of plain text (no markup). On a terminal narrower than the line it breaks between
    words, continuing with `indent`; elsewhere it stays whole."""
    if out.is_terminal and len(text) > out.width:
        text = textwrap.fill(text, width=out.width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False)
    out.print(text, style=style, markup=False, highlight=False)


def _state_line(out: Console, head: str, state: str, tail: str = "") -> None:
    """`head` + the state in its colour + `tail`, wrapped as `say` does."""
    text = f"{head}{state}{tail}".rstrip()
    if out.is_terminal and len(text) > out.width:
        return say(out, text, STATE_STYLE.get(state))
    out.print(Text.assemble(head, (state, STATE_STYLE.get(state, "")), tail.rstrip()))


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def duration(seconds: float) -> str:
    """`0.412 s`, `12.3 s`, `4 min 05 s`, `2 h 03 min`."""
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def request_line(inputs: dict[str, Any]) -> str:
    return (f"{inputs.get('quantity')} {inputs.get('symbol')} on {inputs.get('blockchain')} "
            f"to {inputs.get('address')}")


def outcome(record: JobRecord) -> str:
    """How a job ended, after its state: its outputs, or its error code, step and message (and a resolution)."""
    if record.resolution is not None:
        r = record.resolution
        found = f", withdrawal {r.withdrawal_id}" if r.withdrawal_id is not None else ""
        return f"(resolved by {r.by}{found}: {r.note})"
    if record.error is not None:
        e = record.error
        return f"{e.code} at {e.step}: {e.message}"
    return " ".join(f"{k}={_value(v)}" for k, v in record.outputs.items())


def _step_detail(step: StepRecord) -> str:
    parts: list[str] = []
    for name, value in step.outputs.items():
        if name == "balances" and isinstance(value, dict):
            parts.extend(f"{sym} available {b.get('available')}" for sym, b in value.items() if isinstance(b, dict))
        else:
            parts.append(f"{name}={_value(value)}")
    if step.polls:
        parts.append(f"polls={step.polls}")
    if step.attempts:
        parts.append("attempts=" + ",".join(a.state.value for a in step.attempts))
    if step.lookups:
        parts.append(f"lookups={step.lookups}")
    if step.waiting_on:
        parts.append(f"waiting on the {step.waiting_on}")
    return " ".join(parts)


def show(record: JobRecord, out: Console | None = None, pause: Pause | None = None) -> None:
    """Print a job's record: state, request, times, each step, outputs, error, resolution, what it waits on."""
    out = out or console
    _state_line(out, f"job {record.job_id}  ", record.state.value)
    say(out, f"  request   {request_line(record.inputs)}")
    batch = f"  batch {record.batch_id}" if record.batch_id else ""
    say(out, f"  clientId  {record.client_id}{batch}")
    say(out, f"  created   {stamp(record.created_at)} UTC")
    if record.finished_at is not None:
        took = duration(record.finished_at - record.created_at)
        say(out, f"  finished  {stamp(record.finished_at)} UTC, after {took}")
    else:
        say(out, f"  running   for {duration(time.time() - record.created_at)} "
                 f"(updated {stamp(record.updated_at, date=False)})")
    for step_id, step in record.steps.items():
        took = f"{step.seconds:.3f} s" if step.seconds is not None else "-"
        runs = f"{step.runs} run" + ("s" if step.runs != 1 else "")
        say(out, f"  step {step_id:<20} {step.state.value:<12} {runs:<7} http {step.status_code or '-':<4} {took}")
        detail = _step_detail(step)
        if detail:
            say(out, f"       {detail}", indent="       ")
        if step.waiting_on:
            since = f" since {stamp(step.waiting_since, date=False)} UTC" if step.waiting_since else ""
            who = (f": paused by {pause.by} at {stamp(pause.at)} UTC ({pause.reason})" if pause is not None
                   else " (the switch has been lifted: it goes on at its next run)")
            say(out, f"  waiting   {step_id} is held by the kill switch{since}{who}", "yellow", "            ")
    if record.outputs:
        outputs = " ".join(f"{k}={_value(v)}" for k, v in record.outputs.items())
        say(out, f"  outputs   {outputs}", indent="            ")
    if record.error is not None:
        e = record.error
        say(out, f"  error     {e.code} ({e.source}) at {e.step}: {e.message}", "red", "            ")
    if record.resolution is not None:
        r = record.resolution
        found = f"; withdrawal {r.withdrawal_id} ({r.exchange_status})" if r.withdrawal_id is not None else ""
        say(out, f"  resolved  {r.outcome} by {r.by} at {stamp(r.at)} UTC: {r.note}{found}", indent="            ")


def describe(event: dict[str, str]) -> str:
    """One event as text: time it happened, name, step, then its fields; the message last."""
    at = event.get("at")
    when = stamp(float(at), date=False) if at else "--:--:--.---"
    name = event.get("event", "?")
    step = event.get("step", "")
    fields = [event[k] for k in _BARE_FIELDS if k in event] + [f"{k}={event[k]}" for k in _EVENT_FIELDS if k in event]
    message = event.get("message")
    text = f"{when} {name:<12} {step:<19} {' '.join(fields)}".rstrip()
    return f"{text}  {message}" if message else text


def follow(store: RedisJobStore, job_id: str, out: Console | None = None, timeout: float | None = None,
           block_ms: int = 2000) -> int:
    """Print each event of the job at the time it happened until the job ends (or `timeout` seconds pass);
    returns the exit code of its final state (EXIT_TIMEOUT when it had not ended)."""
    out = out or console
    record = store.get(job_id)
    if record is None:
        errors.print(f"[red]no job {escape(job_id)}[/red]")
        return EXIT_NOT_FOUND
    deadline = None if timeout is None else time.monotonic() + timeout
    say(out, f"job {job_id}  (times UTC)")
    last = "0-0"
    while True:
        wait = block_ms
        if deadline is not None:
            wait = max(1, min(block_ms, int((deadline - time.monotonic()) * 1000)))  # 0 would block for ever
        for entry_id, event in store.events(job_id, last, block_ms=wait):
            last = entry_id
            say(out, f"  {describe(event)}", indent=EVENT_INDENT)
        record = store.require(job_id)
        if record.terminal:
            # The write that ended the job added its event in the same transaction: read the stream to
            # its end, so the last events are never missed.
            while tail := store.events(job_id, last):
                for entry_id, event in tail:
                    last = entry_id
                    say(out, f"  {describe(event)}", indent=EVENT_INDENT)
            _state_line(out, "  => ", record.state.value, f" {outcome(record)}")
            return STATE_EXIT[record.state.value]
        if deadline is not None and time.monotonic() >= deadline:
            where = f" at {record.current_step}" if record.current_step else ""
            say(out, f"  timed out after {timeout:g} s: the job is still {record.state.value}{where}")
            return EXIT_TIMEOUT


def fit(parts: list[str], indent: str = "  ", width: int = WIDTH) -> list[str]:
    """`parts` joined by two spaces, a new indented line started wherever the next part would pass
    `width`: a line breaks between parts, never inside one."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "  " + part
        else:
            lines.append(indent + part)
    return lines


def job_lines(record: JobRecord) -> list[str]:
    """A job in a list (`bpx-worker jobs`): id, state, error code, then when it was created and its
    clientId (and batch), in lines of at most 80 columns unless one part is longer."""
    state = record.state.value + (f" (resolved {record.resolution.outcome})" if record.resolution else "")
    head = [record.job_id, state] + ([record.error.code] if record.error is not None else [])
    tail = [f"created {stamp(record.created_at)}", f"clientId {record.client_id}"]
    if record.batch_id:
        tail.append(f"batch {record.batch_id}")
    return fit(head) + fit(["  " + tail[0], *tail[1:]])


def job_summary(record: JobRecord) -> dict[str, Any]:
    """A job for `jobs --json`: one JSON object per line."""
    return {
        "job_id": record.job_id, "state": record.state.value, "code": record.error.code if record.error else None,
        "client_id": record.client_id, "batch_id": record.batch_id, "created_at": record.created_at,
        "finished_at": record.finished_at, "withdrawal_id": record.outputs.get("withdrawalId"),
        "resolution": record.resolution.model_dump(mode="json") if record.resolution else None,
    }
