"""The workflow run in process, step by step: the reference path and the benchmark baseline.

The same engine as the Celery tasks, over a job store in memory: where a task
would be re-queued with a countdown, this loop sleeps it. No Celery, no Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bpx_worker.engine.engine import StepEngine
from bpx_worker.jobs.memory import MemoryJobStore
from bpx_worker.jobs.record import JobRecord


def run_job(engine: StepEngine, job_id: str, sleep: Callable[[float], None] = time.sleep) -> JobRecord:
    """Run every step of the job in document order until it ends; returns the final record."""
    for step in engine.workflow.steps:
        while True:
            outcome = engine.run(job_id, step.step_id)
            if outcome.action == "retry":
                sleep(outcome.countdown)
                continue
            break
        if outcome.action == "stop":
            break
    return engine.store.require(job_id)


def run_inprocess(engine_for: Callable[[MemoryJobStore], StepEngine], idempotency_key: str, client_id: str,
                  inputs: Mapping[str, Any], sealed_2fa: bytes | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> JobRecord:
    """Create the job in a fresh memory store and run it to the end."""
    store = MemoryJobStore()
    job_id = store.create(idempotency_key, client_id, dict(inputs), sealed_2fa)
    return run_job(engine_for(store), job_id, sleep)
