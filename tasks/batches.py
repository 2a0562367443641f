"""Batch tasks, on their own queue (`batches`): balance reads for a submitter, trackers, inbox runs, the sweep.

None of them waits in a worker slot for a batch to progress: a tracker looks
once and re-queues itself with a countdown (BATCH_TRACK_INTERVAL).
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import structlog
from celery import Task

from bpx_worker.arazzo import withdrawal_workflow
from bpx_worker.batches.balances import read_available
from bpx_worker.batches.inbox import run_inbox
from bpx_worker.batches.payout_file import plain
from bpx_worker.batches.runner import BatchRunner
from bpx_worker.batches.store import BatchStore
from bpx_worker.config import settings as config_settings
from bpx_worker.config.settings import Settings
from bpx_worker.errors import WorkerError
from bpx_worker.tasks.app import app, exchange_client, job_store
from bpx_worker.tasks.withdrawal import workflow_chain
from bpx_worker.withdrawal.request import SafetyLimits

log = structlog.get_logger(__name__)

_cache: dict[str, Any] = {}


def _fresh(settings: Settings) -> dict[str, Any]:
    # Rebuilt when the settings are re-read (reload_settings) or in a new pool process.
    if _cache.get("settings") is not settings or _cache.get("pid") != os.getpid():
        _cache.clear()
        _cache.update(settings=settings, pid=os.getpid())
    return _cache


def batch_store() -> BatchStore:
    s = config_settings.get()
    cache = _fresh(s)
    if "store" not in cache:
        cache["store"] = BatchStore.from_url(s.redis_url, s.batch_retention, s.redis_socket_timeout,
                                             **s.redis_ssl_options())
    store: BatchStore = cache["store"]
    return store


def batch_runner() -> BatchRunner:
    """The process's batch runner: jobs go through the workflow chain, trackers through `batch.track`."""
    s = config_settings.get()
    cache = _fresh(s)
    if "runner" not in cache:
        cache["runner"] = BatchRunner(
            batch_store(), job_store(), _enqueue, _send_tracker,
            track_interval=s.batch_track_interval, submit_stall=s.batch_submit_stall)
    runner: BatchRunner = cache["runner"]
    return runner


def limits(s: Settings) -> SafetyLimits:
    return SafetyLimits(max_quantity=s.max_quantity, allowed_destinations=s.allowed_destinations)


def _enqueue(job_id: str) -> None:
    workflow_chain(job_id).apply_async()


def _send_tracker(batch_id: str, nonce: str, countdown: float) -> None:
    track.apply_async((batch_id, nonce), countdown=countdown)


def read_balances_here(symbols: list[str]) -> dict[str, Decimal]:
    """Read the available balances in this (worker) process, through its signed, rate-limited client."""
    return read_available(exchange_client(), withdrawal_workflow(), symbols)


@app.task(name="batch.readBalances", acks_late=False)
def read_balances(request_id: str, symbols: list[str]) -> None:
    """Read the balances for a submitter that holds no API secret; the answer goes to Redis, the secret never."""
    try:
        found = read_balances_here(symbols)
        answer: dict[str, Any] = {"balances": {symbol: plain(amount) for symbol, amount in found.items()}}
    except WorkerError as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    batch_store().answer_balances(request_id, answer)


# Batch tasks hold no job lease, so the step time limits (a share of LEASE_TTL) do not fit them: finishing the
# submission of a large file may take longer than one step.
BATCH_TIME_LIMITS: dict[str, Any] = {"soft_time_limit": 540, "time_limit": 600}
SCHEDULE_LOCK_TTL = 60.0  # refreshed while the run goes on; a crashed run's lock is gone a minute later


@app.task(name="batch.track", bind=True, max_retries=None, **BATCH_TIME_LIMITS)
def track(self: Task, batch_id: str, nonce: str) -> str:
    """One look at a batch; re-queued with a countdown until it ends (or a newer tracker takes over)."""
    with structlog.contextvars.bound_contextvars(batch_id=batch_id):
        if batch_runner().track(batch_id, nonce):
            return "stopped"
    raise self.retry(countdown=config_settings.get().batch_track_interval)


@app.task(name="batch.runSchedule", **BATCH_TIME_LIMITS)
def run_schedule(name: str) -> list[dict[str, Any]]:
    """One run of a payout schedule over its inbox; a run of the same schedule already going makes this a no-op."""
    s = config_settings.get()
    schedule = next((entry for entry in s.payout_schedules if entry.name == name), None)
    if schedule is None:
        log.error("unknown_payout_schedule", schedule=name)
        return []
    store = batch_store()
    # The lock outlives any honest run; a crashed run's lock expires and the next run resumes its files.
    token = store.lock_schedule(name, ttl=SCHEDULE_LOCK_TTL)
    if token is None:
        log.info("payout_schedule_busy", schedule=name)
        return []
    try:
        outcomes = run_inbox(schedule, batch_runner(), schedule.namespace or s.batch_namespace, limits(s),
                             read_balances_here, alive=lambda: store.refresh_schedule_lock(name, token,
                                                                                          SCHEDULE_LOCK_TTL))
    finally:
        store.unlock_schedule(name, token)
    return [{"file": o.name, "outcome": o.outcome.value, "batch": o.batch_id} for o in outcomes]


@app.task(name="batch.sweep")
def sweep() -> list[str]:
    """Give every open batch whose tracker went silent a new one."""
    runner = batch_runner()
    return [batch_id for batch_id in runner.batches.open_batches() if runner.ensure_tracked(batch_id)]
