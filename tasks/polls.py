"""Poll rounds: a waker thread in every worker sends the due polls, and one task polls them all at once.

Waiting polls of pending withdrawals live in a Redis sorted set (`jobs/schedule.py`), not as
countdown messages in worker memory. Every `POLL_WAKE_INTERVAL` seconds the waker claims the
due ones (one script: no two wakers send the same poll) and sends them, by step, as one
`polls.round` task on the polls queue. The round asks the engine to poll every job in it with
one read of the withdrawal history (`StepEngine.run_polls`): each job is judged against its
own criteria, and what comes next for each is what its own step task would do (poll again
later, or go on); a job that ended is handed to its step's own task, which reports the end
(Flower's state, the callback) as the run that ended it would. So 10,000 pending withdrawals cost a few history
reads a round, not one read per withdrawal per poll; and the reads are background requests
that yield to fresh withdrawals when the exchange's rate limit binds.

A claimed poll comes due again after `VISIBILITY_TIMEOUT` if its round was lost (a worker that
died between claiming and sending): the same bound as any message Redis redelivers. A round
redelivered after a worker died is safe: each job's step runs under its lease and skips what
is already recorded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import structlog
from celery import signals

from bpx_worker import metrics
from bpx_worker.config import settings as config_settings
from bpx_worker.config.celery import POLLS_QUEUE
from bpx_worker.errors import ServiceUnavailable
from bpx_worker.tasks.app import app, poll_schedule, step_engine
from bpx_worker.tasks.withdrawal import STEP_TASKS, workflow_chain

log = structlog.get_logger(__name__)

BATCH = 500  # polls claimed per look (a look every POLL_WAKE_INTERVAL): at most 500 polls a second a worker
ROUND_TASK = "polls.round"
# Rounds one worker process runs at once. A round is a burst of CPU (hundreds of records read, judged and
# written); more at once would take every slot and the interpreter's time from fresh withdrawals. A round
# that finds the process busy gives its polls back to the schedule, due as they were: the next look sends
# them again. With more pending withdrawals than one process can poll, polls run late, fresh work does not.
ROUNDS_AT_ONCE = 1
_round_slots = threading.BoundedSemaphore(ROUNDS_AT_ONCE)


@app.task(name=ROUND_TASK, max_retries=None, autoretry_for=(ServiceUnavailable,), retry_backoff=True,
          retry_backoff_max=60)
def poll_round(step_id: str, due: list[tuple[str, float]]) -> dict[str, int]:
    """Poll `step_id` of the jobs in `due` ([job id, due time], ...) with one shared read."""
    if not _round_slots.acquire(blocking=False):
        poll_schedule().schedule_many(step_id, dict(due))
        return {"deferred": len(due)}
    try:
        return _poll(step_id, due)
    finally:
        _round_slots.release()


def _poll(step_id: str, due: list[tuple[str, float]]) -> dict[str, int]:
    started = time.monotonic()
    outcomes = step_engine().run_polls([job_id for job_id, _ in due], step_id)
    seconds = (time.monotonic() - started) / max(len(due), 1)
    counts: dict[str, int] = defaultdict(int)
    now = time.time()
    # Not settled yet, or the rate limit held the read back: the next poll, in the schedule (one write).
    waiting = {job_id: now + o.countdown for job_id, o in outcomes.items() if o.action == "retry"}
    poll_schedule().schedule_many(step_id, waiting)
    poll_schedule().cancel_many(step_id, [job_id for job_id in outcomes if job_id not in waiting])
    counts["waiting"] = len(waiting)
    for job_id, due_at in due:
        outcome = outcomes[job_id]
        metrics.observe_run(step_id, outcome.action, seconds, late_by=now - due_at)
        if outcome.action == "retry":
            continue
        if outcome.action == "continue":
            workflow_chain(job_id).apply_async()  # steps already recorded skip themselves
            counts["continued"] += 1
        elif outcome.state is not None and outcome.state.terminal:
            # The job ended in this round. Its step's own task runs once more, finds it ended and reports
            # it as the run that ended it would: Flower shows the step ended (FAILURE with the code when the
            # job failed or needs review), and the callback is sent from there.
            STEP_TASKS[step_id].apply_async((job_id,), queue=POLLS_QUEUE)
            counts[outcome.state.value] += 1
    return dict(counts)


class PollWaker(threading.Thread):
    """Sends due polls, a round per step, until stopped."""

    def __init__(self, interval: float, hold: float):
        super().__init__(name="poll-waker", daemon=True)
        self.interval, self.hold = interval, hold
        self.stopping = threading.Event()

    def wake_once(self) -> int:
        """Claim the polls due now and send them as rounds; returns how many polls."""
        due = poll_schedule().claim(time.time(), BATCH, self.hold)
        by_step: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for job_id, step_id, at in due:
            by_step[step_id].append((job_id, at))
        for step_id, jobs in by_step.items():
            poll_round.apply_async((step_id, jobs), queue=POLLS_QUEUE)
        return len(due)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.wake_once()
            except Exception as exc:  # noqa: BLE001 - Redis down or restarting: the next tick tries again
                log.warning("poll_waker_failed", error=f"{type(exc).__name__}: {exc}")
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()


_waker: PollWaker | None = None


@signals.worker_ready.connect
def _start_waker(**_: Any) -> None:
    global _waker
    s = config_settings.get()
    _waker = PollWaker(s.poll_wake_interval, float(s.visibility_timeout))
    _waker.start()


@signals.worker_shutdown.connect
def _stop_waker(**_: Any) -> None:
    if _waker is not None:
        _waker.stop()
