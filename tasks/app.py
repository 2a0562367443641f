"""The Celery application and the process-wide objects the tasks share.

Start-up checks: a `celery -A bpx_worker.tasks.app ...` command with unusable
settings, and a worker without usable keys, print one line naming the variable
and exit 78 (EX_CONFIG) before connecting to anything.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any, NoReturn

import structlog
from celery import Celery, signals

from bpx_worker import logs, metrics
from bpx_worker.arazzo import withdrawal_workflow
from bpx_worker.config import settings as config_settings
from bpx_worker.config.celery import celery_settings
from bpx_worker.engine.engine import StepEngine
from bpx_worker.errors import ConfigurationError
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.ratelimit import Limit, RedisRateLimiter
from bpx_worker.exchange.signer import Signer
from bpx_worker.jobs.schedule import PollSchedule
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.withdrawal.runtime import build_engine

EX_CONFIG = 78  # sysexits.h; the CLI's table of exit codes says the same

# Interactive commands (the CLI) give up on an unreachable or silent Redis within
# seconds; the read timeout leaves room for `watch`'s 2 s blocking reads.
INTERACTIVE_CONNECT_TIMEOUT = 2.0
INTERACTIVE_READ_TIMEOUT = 5.0
INTERACTIVE_RETRIES = 1


def refuse_to_start(exc: ConfigurationError) -> NoReturn:
    """One line on stderr naming the bad variable, then exit 78."""
    sys.stderr.write(f"bpx-worker: refusing to start: {logs.hide_credentials(str(exc))}\n")
    sys.stderr.flush()
    raise SystemExit(EX_CONFIG)


def _loaded_by_celery_command() -> bool:
    # `celery -A bpx_worker.tasks.app ...` imports its CLI before loading the app; an
    # application importing this module (the Python API) gets the exception instead.
    return "celery.bin.celery" in sys.modules


try:
    _settings = config_settings.get()
except ConfigurationError as _exc:
    if _loaded_by_celery_command():
        refuse_to_start(_exc)
    raise

app = Celery("withdrawal")
app.config_from_object(celery_settings(_settings))
app.conf.include = ["bpx_worker.tasks.withdrawal", "bpx_worker.tasks.polls", "bpx_worker.tasks.batches",
                    "bpx_worker.tasks.callbacks"]

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def job_store() -> RedisJobStore:
    """The store workers use: it rides out a short Redis restart."""
    s = config_settings.get()
    store = RedisJobStore.from_url(s.redis_url, s.job_retention, s.redis_socket_timeout, **s.redis_ssl_options())
    store.observer = metrics.observe_change  # what the engine records is what the metrics count
    return store


@lru_cache(maxsize=1)
def interactive_job_store() -> RedisJobStore:
    """The store commands use: an unreachable Redis raises ServiceUnavailable within seconds."""
    s = config_settings.get()
    return RedisJobStore.from_url(
        s.redis_url, s.job_retention, INTERACTIVE_READ_TIMEOUT, retries=INTERACTIVE_RETRIES,
        connect_timeout=INTERACTIVE_CONNECT_TIMEOUT, **s.redis_ssl_options(),
    )


@lru_cache(maxsize=1)
def poll_schedule() -> PollSchedule:
    return PollSchedule(job_store().redis)


@lru_cache(maxsize=1)
def signer() -> Signer:
    s = config_settings.get()
    api_key, api_secret = s.api_key(), s.api_secret()
    try:
        return Signer.from_secret(api_key, api_secret)
    except ConfigurationError as exc:
        raise ConfigurationError(f"BACKPACK_API_KEY / BACKPACK_API_SECRET: {exc}") from None


def check_worker_config() -> None:
    """What a worker needs before it takes a message: settings, a matching key pair, a usable exchange URL.

    Raises ConfigurationError naming the variable. Building the engine connects to nothing.
    """
    config_settings.get()
    signer()
    step_engine()


@lru_cache(maxsize=1)
def rate_limiter() -> RedisRateLimiter:
    """The rate limit toward the exchange, shared through Redis by every worker process."""
    s = config_settings.get()
    limit = Limit(s.exchange_rate_limit, s.exchange_rate_burst, s.exchange_rate_max_wait, s.exchange_rate_slowdown)
    return RedisRateLimiter.from_url(s.redis_url, limit, s.redis_socket_timeout, **s.redis_ssl_options())


@lru_cache(maxsize=1)
def exchange_client() -> BackpackClient:
    """The process's one client of the exchange (signed, rate limited)."""
    return BackpackClient.from_settings(config_settings.get(), signer(), rate_limiter())


@lru_cache(maxsize=1)
def step_engine() -> StepEngine:
    s = config_settings.get()
    client = metrics.MeteredExchange(exchange_client(), withdrawal_workflow())
    return build_engine(s, job_store(), client, signer())


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
    for cached in (job_store, interactive_job_store, poll_schedule, signer, rate_limiter, exchange_client,
                   step_engine, unconfigured_engine):
        cached.cache_clear()


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    s = config_settings.get()
    logs.configure(s.log_level, s.log_format)


@signals.worker_init.connect
def _check_before_ready(**_: object) -> None:
    # Runs in the worker's main process before it connects or says "ready": a worker
    # that cannot sign would take every message only to fail it.
    try:
        check_worker_config()
    except ConfigurationError as exc:
        refuse_to_start(exc)


@signals.task_prerun.connect
def _bind_task(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: object) -> None:
    # Every log line of a step carries the task and the job it works on.
    structlog.contextvars.clear_contextvars()
    job_id = args[0] if args and task.name.startswith("withdrawal.") else None
    structlog.contextvars.bind_contextvars(task_id=task_id, task=task.name, job_id=job_id)


@signals.worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked pool process must not share the parent's sockets.
    job_store.cache_clear()
    rate_limiter.cache_clear()
    exchange_client.cache_clear()
    poll_schedule.cache_clear()
    step_engine.cache_clear()
    unconfigured_engine.cache_clear()


# --- metrics: counted by the pool processes, served by the worker's main process ----------------

_worker_metrics: metrics.WorkerMetrics | None = None


@signals.worker_init.connect
def _prepare_metrics(**_: object) -> None:
    # In the main process, before the pool forks: the pool processes must count into files it can read.
    global _worker_metrics
    s = config_settings.get()
    if s.metrics_port is not None:
        _worker_metrics = metrics.prepare_worker(s.prometheus_multiproc_dir)


@signals.worker_ready.connect
def _serve_metrics(**_: object) -> None:
    s = config_settings.get()
    if _worker_metrics is None or s.metrics_port is None:
        return
    try:
        metrics.serve_worker(_worker_metrics, s.metrics_host, s.metrics_port, job_store)
    except OSError as exc:
        log.error("metrics_unavailable", host=s.metrics_host, port=s.metrics_port, error=str(exc))


@signals.worker_process_shutdown.connect
def _pool_process_exits(**_: object) -> None:
    metrics.pool_process_exited(_worker_metrics, os.getpid())


@signals.worker_shutdown.connect
def _stop_metrics(**_: object) -> None:
    metrics.stop_worker(_worker_metrics)
