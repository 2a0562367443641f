"""The Celery application and the process-wide objects the tasks share."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import structlog
from celery import Celery, signals

from bpx_worker import logs
from bpx_worker.config import settings as config_settings
from bpx_worker.config.celery import celery_settings
from bpx_worker.engine.engine import StepEngine
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.signer import Signer
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.withdrawal.runtime import build_engine

app = Celery("withdrawal")
app.config_from_object(celery_settings(config_settings.get()))
app.conf.include = ["bpx_worker.tasks.withdrawal"]


@lru_cache(maxsize=1)
def job_store() -> RedisJobStore:
    s = config_settings.get()
    return RedisJobStore.from_url(s.redis_url, s.job_retention, s.redis_socket_timeout)


@lru_cache(maxsize=1)
def signer() -> Signer:
    s = config_settings.get()
    return Signer.from_secret(s.api_key(), s.api_secret())


@lru_cache(maxsize=1)
def step_engine() -> StepEngine:
    s = config_settings.get()
    return build_engine(s, job_store(), BackpackClient.from_settings(s, signer()), signer())


@lru_cache(maxsize=1)
def unconfigured_engine() -> StepEngine:
    """An engine with no keys: it can only end jobs (a worker whose keys do not load)."""
    s = config_settings.get()
    return build_engine(s, job_store(), BackpackClient.from_settings(s, None), None)


def reload_settings() -> None:
    """Re-read the environment and drop every cached connection (for embedding and tests)."""
    config_settings.get.cache_clear()
    app.conf.update(celery_settings(config_settings.get()))
    # Publish through a pool built from the new broker URL (Celery has no public way to rebuild it).
    app.amqp._producer_pool = None  # type: ignore[attr-defined]
    for cached in (job_store, signer, step_engine, unconfigured_engine):
        cached.cache_clear()


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    s = config_settings.get()
    logs.configure(s.log_level, s.log_format)


@signals.task_prerun.connect
def _bind_task(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: object) -> None:
    # Every log line of a step carries the task and the job it works on.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=task.name, job_id=args[0] if args else None)


@signals.worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked pool process must not share the parent's sockets.
    job_store.cache_clear()
    step_engine.cache_clear()
    unconfigured_engine.cache_clear()
