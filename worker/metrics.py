"""Prometheus metrics of the workers and the intake (prometheus-client).

What is counted, and where:

Counted by the worker (step tasks, from the changes the engine records):

- `bpxw_jobs_ended_total{state, code}`: jobs that reached a terminal state (`code` empty when
  succeeded), counted by the change that ended the job;
- `bpxw_step_seconds{step, state}`: a step's span from its first run to its end, polls and
  retries included;
- `bpxw_step_runs_total{step, next}`, `bpxw_step_run_seconds{step, next}`: each task run, and
  what came next (continue, retry, stop);
- `bpxw_task_start_delay_seconds{step}`: how late a re-queued run (a poll, a retry) started
  after it was due: polls falling behind;
- `bpxw_exchange_calls_total{operation, status, code}`, `bpxw_exchange_call_seconds{operation}`:
  every call to the exchange, by operationId, HTTP status (or the failure's type when there was
  no answer) and the exchange's error code;
- `bpxw_reconcile_polls_total{step, status}`: every poll of a polled step, by the status seen;
- `bpxw_callbacks_total{outcome}`: end-of-job callbacks delivered, retried, failed, refused.

Counted by the intake: `bpxw_intake_submissions_total{outcome}` (created, replayed, conflict,
invalid) and `bpxw_intake_requests_total{route, method, status}`.

Read from Redis at each scrape, by both: `bpxw_queue_messages{queue}`, `bpxw_unacked_messages`,
`bpxw_active_jobs`, `bpxw_oldest_active_change_age_seconds`, `bpxw_paused` (1 while the kill
switch key `bpxw:paused` is present) and `bpxw_redis_up`.

Celery's prefork pool runs steps in child processes, so a worker counts in
prometheus-client's multiprocess mode: `prepare_worker` (in the worker's main
process, before the pool forks) points PROMETHEUS_MULTIPROC_DIR at a directory
of its own and empties it; each child writes its counters there, and the small
HTTP server of the main process (`serve_worker`) adds them up at each scrape.
Metric objects are made on first use, in the process that counts.

Metrics never carry secrets, addresses or amounts: labels are step ids,
operation ids, states and codes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import prometheus_client
import redis
import structlog
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bpx_worker.arazzo import HttpRequest, Workflow
from bpx_worker.config.celery import QUEUE
from bpx_worker.engine.engine import Exchange
from bpx_worker.errors import ExchangeError, RejectedError, ServiceUnavailable
from bpx_worker.exchange.client import Response
from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.jobs.store import RedisJobStore

log = structlog.get_logger(__name__)

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
CALL_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class _Metrics:
    jobs_ended: Counter
    step_seconds: Histogram
    step_runs: Counter
    step_run_seconds: Histogram
    start_delay: Histogram
    exchange_calls: Counter
    exchange_seconds: Histogram
    polls: Counter
    callbacks: Counter
    submissions: Counter
    intake_requests: Counter


@lru_cache(maxsize=1)
def metrics() -> _Metrics:
    """The process's metric objects, made on first use (after the worker chose multiprocess mode)."""
    return _Metrics(
        jobs_ended=Counter("bpxw_jobs_ended", "Jobs that reached a terminal state.", ["state", "code"]),
        step_seconds=Histogram("bpxw_step_seconds", "A step's span from its first run to its end.",
                               ["step", "state"], buckets=SECONDS),
        step_runs=Counter("bpxw_step_runs", "Runs of a step task, by what came next.", ["step", "next"]),
        step_run_seconds=Histogram("bpxw_step_run_seconds", "Duration of one run of a step task.",
                                   ["step", "next"], buckets=CALL_SECONDS),
        start_delay=Histogram("bpxw_task_start_delay_seconds",
                              "How late a re-queued step run (a poll, a retry) started after it was due.",
                              ["step"], buckets=SECONDS),
        exchange_calls=Counter("bpxw_exchange_calls", "Calls to the exchange by operation and outcome.",
                               ["operation", "status", "code"]),
        exchange_seconds=Histogram("bpxw_exchange_call_seconds", "Duration of calls to the exchange.",
                                   ["operation"], buckets=CALL_SECONDS),
        polls=Counter("bpxw_reconcile_polls", "Polls of a polled step, by the status seen.", ["step", "status"]),
        callbacks=Counter("bpxw_callbacks", "End-of-job callbacks by outcome.", ["outcome"]),
        submissions=Counter("bpxw_intake_submissions", "Submissions to the HTTP intake by outcome.", ["outcome"]),
        intake_requests=Counter("bpxw_intake_requests", "Requests to the HTTP intake.", ["route", "method", "status"]),
    )


# --- what the engine records ----------------------------------------------------------------------


def observe_change(event: Mapping[str, Any], record: JobRecord) -> None:
    """Count a change the engine recorded (the job store's observer): polls, step ends, job ends."""
    m = metrics()
    kind = event.get("event")
    step = str(event.get("step") or "")
    if kind == "poll":
        m.polls.labels(step, str(event.get("status") or "none")).inc()
    elif kind == "step_done":
        entry = record.steps.get(step)
        if entry is not None and entry.seconds is not None:
            m.step_seconds.labels(step, "done").observe(entry.seconds)
        if record.state is JobState.SUCCEEDED:  # the change that finished the last step ended the job
            m.jobs_ended.labels(record.state.value, "").inc()
    elif kind == "job_ended":
        entry = record.steps.get(step)
        if entry is not None and entry.ended_at is not None:
            m.step_seconds.labels(step, record.state.value).observe(max(entry.ended_at - entry.started_at, 0.0))
        m.jobs_ended.labels(record.state.value, str(event.get("code") or "")).inc()


def observe_run(step: str, next_action: str, seconds: float, late_by: float | None) -> None:
    """Count one run of a step task; `late_by` is how long after its due time a re-queued run started."""
    m = metrics()
    m.step_runs.labels(step, next_action).inc()
    m.step_run_seconds.labels(step, next_action).observe(seconds)
    if late_by is not None:
        m.start_delay.labels(step).observe(max(late_by, 0.0))


class MeteredExchange:
    """The exchange client, counting each call by operation id, HTTP status and the exchange's code."""

    def __init__(self, client: Exchange, workflow: Workflow, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.clock = clock
        self._operations = {(s.operation.method, s.operation.path): s.operation.operation_id
                            for s in workflow.steps}

    def reserve_slot(self) -> None:
        self.client.reserve_slot()

    def send(self, request: HttpRequest, *, background: bool = False) -> Response:
        operation = self._operations.get((request.method, request.path), f"{request.method} {request.path}")
        m = metrics()
        started = self.clock()
        try:
            response = self.client.send(request, background=background)
        except RejectedError as exc:
            m.exchange_calls.labels(operation, str(exc.status or ""), exc.code).inc()
            raise
        except ExchangeError as exc:
            # No status: the request failed before an answer (refused, timed out, reset).
            m.exchange_calls.labels(operation, str(exc.status) if exc.status else type(exc).__name__, "").inc()
            raise
        finally:
            m.exchange_seconds.labels(operation).observe(self.clock() - started)
        m.exchange_calls.labels(operation, str(response.status), "").inc()
        return response


# --- read from Redis at each scrape ---------------------------------------------------------------


class RedisGauges(Collector):
    """Queue depth, unacked messages, unfinished jobs and the kill switch, read when scraped."""

    NAMES = ("bpxw_redis_up", "bpxw_queue_messages", "bpxw_unacked_messages", "bpxw_active_jobs",
             "bpxw_oldest_active_change_age_seconds", "bpxw_paused")

    def __init__(self, store: Callable[[], RedisJobStore], queues: Iterable[str] = (QUEUE,),
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.queues = tuple(queues)
        self.clock = clock

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("bpxw_redis_up", "1 when Redis answered this scrape.")
        try:
            store = self.store()
            client = store.redis
            depth = GaugeMetricFamily("bpxw_queue_messages", "Messages waiting in a Celery queue.", labels=["queue"])
            for queue in self.queues:
                # kombu keeps a queue's priorities in lists of their own: the name, then name<sep><priority>.
                names = [queue, *(f"{queue}{Channel.sep}{p}" for p in PRIORITY_STEPS if p)]
                depth.add_metric([queue], sum(int(client.llen(name)) for name in names))
            unacked = GaugeMetricFamily("bpxw_unacked_messages",
                                        "Messages delivered to workers and not yet acknowledged (running steps, "
                                        "countdowns held for later).")
            unacked.add_metric([], int(client.hlen(Channel.unacked_key)))
            count, oldest = store.active_jobs()
            active = GaugeMetricFamily("bpxw_active_jobs", "Jobs not yet ended.")
            active.add_metric([], count)
            age = GaugeMetricFamily("bpxw_oldest_active_change_age_seconds",
                                    "Seconds since the least recently changed unfinished job last changed.")
            age.add_metric([], max(self.clock() - oldest, 0.0) if oldest is not None else 0.0)
            paused = GaugeMetricFamily("bpxw_paused", "1 while the kill switch (key bpxw:paused) is set.")
            paused.add_metric([], 1.0 if store.paused() else 0.0)
        except (redis.RedisError, ServiceUnavailable) as exc:
            log.warning("metrics_redis_unavailable", error=type(exc).__name__)
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        return [up, depth, unacked, active, age, paused]


class _Forward(Collector):
    """Another registry's metrics, inside this one."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()


def intake_registry(store: Callable[[], RedisJobStore]) -> CollectorRegistry:
    """What the intake's /metrics shows: its own counters and the gauges read from Redis."""
    prometheus_client.disable_created_metrics()  # `_created` samples would double every counter's lines
    registry = CollectorRegistry()
    registry.register(_Forward(prometheus_client.REGISTRY))
    registry.register(RedisGauges(store))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


# --- the worker's main process ---------------------------------------------------------------------


@dataclass
class WorkerMetrics:
    directory: Path
    owned: bool  # made here: removed when the worker stops
    server: Any = None


def prepare_worker(directory: Path | None) -> WorkerMetrics:
    """Multiprocess mode for a worker, in its main process before the pool forks.

    Uses `directory` (PROMETHEUS_MULTIPROC_DIR) or a new private one, and
    empties it: counters left by an earlier run of this worker would otherwise
    be added to this one's.
    """
    owned = directory is None
    path = Path(tempfile.mkdtemp(prefix="bpxw-metrics-")) if directory is None else directory
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.db"):
        leftover.unlink(missing_ok=True)
    # prometheus-client reads this variable where it keeps values; the pool processes inherit it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # It chose how to keep values when it was first imported, maybe before this: choose again. Metric
    # objects are made on first use (`metrics()`), so every one of them is made after this point.
    values.ValueClass = values.get_value_class()
    metrics.cache_clear()
    return WorkerMetrics(path, owned)


def serve_worker(prepared: WorkerMetrics, host: str, port: int, store: Callable[[], RedisJobStore]) -> int:
    """Start the worker's metrics server (a thread of the main process); returns the port it listens on."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(prepared.directory))
    registry.register(RedisGauges(store))
    server, _ = prometheus_client.start_http_server(port, addr=host, registry=registry)
    prepared.server = server
    listening = int(server.server_address[1])
    log.info("metrics_listening", host=host, port=listening)
    return listening


def pool_process_exited(prepared: WorkerMetrics | None, pid: int) -> None:
    """A pool process ends: its live gauges no longer count (its counters stay in the totals)."""
    if prepared is not None:
        multiprocess.mark_process_dead(pid, str(prepared.directory))


def stop_worker(prepared: WorkerMetrics | None) -> None:
    """Stop the server; remove the directory when it was made for this worker."""
    if prepared is None:
        return
    if prepared.server is not None:
        prepared.server.shutdown()
        prepared.server.server_close()
    if prepared.owned:
        shutil.rmtree(prepared.directory, ignore_errors=True)
