"""The poll waker: a thread in every worker that sends due polls from the schedule to the polls queue.

Waiting polls of pending withdrawals live in a Redis sorted set (`jobs/schedule.py`), not as
countdown messages in worker memory. Every `POLL_WAKE_INTERVAL` seconds the waker claims the due
ones (one script: no two wakers send the same poll) and sends each as the chain from its step on,
the first task on the polls queue. A claimed poll comes due again after `VISIBILITY_TIMEOUT` if its
wake was lost (a worker that died between claiming and sending): the same bound as any message
Redis redelivers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from celery import signals

from bpx_worker.config import settings as config_settings
from bpx_worker.tasks.app import poll_schedule
from bpx_worker.tasks.withdrawal import workflow_chain

log = structlog.get_logger(__name__)

BATCH = 500  # polls sent per claim; a full batch is followed by another claim at once


class PollWaker(threading.Thread):
    """Sends due polls until stopped."""

    def __init__(self, interval: float, hold: float):
        super().__init__(name="poll-waker", daemon=True)
        self.interval, self.hold = interval, hold
        self.stopping = threading.Event()

    def wake_once(self) -> int:
        """Claim and send the polls due now; returns how many."""
        due = poll_schedule().claim(time.time(), BATCH, self.hold)
        for job_id, step_id, at in due:
            workflow_chain(job_id, from_step=step_id, due=at).apply_async()
        return len(due)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                sent = self.wake_once()
            except Exception as exc:  # noqa: BLE001 - Redis down or restarting: the next tick tries again
                log.warning("poll_waker_failed", error=f"{type(exc).__name__}: {exc}")
                sent = 0
            if sent < BATCH:
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
