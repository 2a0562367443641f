"""The callback task: tell the service that submitted a job how it ended (see `bpx_worker.callbacks`).

A task of its own, sent when a step task sees its job ended: a slow or
unreachable receiver never holds up a step. Each attempt is recorded in Redis
(`bpx_worker.jobs.store`, `bpxw:job:<id>:callback`) before it is made; a
callback already delivered, failed or refused is not made again.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import structlog
from celery import Task

from bpx_worker import callbacks, metrics
from bpx_worker.config import settings as config_settings
from bpx_worker.engine.backoff import Backoff
from bpx_worker.errors import ConfigurationError
from bpx_worker.tasks.app import app, job_store

log = structlog.get_logger(__name__)

FINAL = frozenset({"delivered", "failed", "refused"})


def _user_agent() -> str:
    try:
        return f"bpx-worker/{version('backpack-withdrawal-worker')}"
    except PackageNotFoundError:
        return "bpx-worker"


@app.task(name="withdrawal.callback", bind=True, max_retries=None)
def deliver_callback(self: Task, job_id: str) -> dict[str, Any]:
    """POST the ended job's record to its callback URL, signed; retried with backoff."""
    settings = config_settings.get()
    store = job_store()
    record = store.get(job_id)
    if record is None or not record.terminal or not record.callback_url:
        return {"job_id": job_id, "callback": "none"}
    state = store.callback_delivery(job_id).get("state")
    if state in FINAL:
        return {"job_id": job_id, "callback": state}
    host = urlsplit(record.callback_url).hostname  # logged instead of the URL, whose query may be private

    def end(outcome: str, error: str, status: int | None = None) -> dict[str, Any]:
        store.record_callback(job_id, state=outcome, status=status, error=error)
        metrics.metrics().callbacks.labels(outcome).inc()
        log.warning("callback_" + outcome, job_id=job_id, callback_host=host, status=status, reason=error)
        return {"job_id": job_id, "callback": outcome}

    # Checked again here: the allow-list may have changed since the job was submitted.
    problem = callbacks.url_problem(record.callback_url, settings.callback_allowed_hosts)
    if problem is not None:
        return end("refused", f"callback_url {problem}; it was not called")
    try:
        secret = settings.callback_secret_values().get(record.submitted_by or "")
    except ConfigurationError as exc:
        return end("failed", str(exc))
    if secret is None:
        return end("refused", f"no CALLBACK_SECRETS entry for token {record.submitted_by!r}; it was not called")
    store.record_callback(job_id, attempt=True)
    outcome = callbacks.call(record.callback_url, record, secret, timeout=settings.callback_timeout,
                             user_agent=_user_agent())
    attempts = int(store.callback_delivery(job_id).get("attempts", "1"))
    if outcome.kind == "delivered":
        store.record_callback(job_id, state="delivered", status=outcome.status)
        metrics.metrics().callbacks.labels("delivered").inc()
        log.info("callback_delivered", job_id=job_id, callback_host=host, status=outcome.status, attempts=attempts)
        return {"job_id": job_id, "callback": "delivered", "attempts": attempts}
    if outcome.kind == "refused":
        return end("refused", outcome.error or "refused", outcome.status)
    if attempts >= settings.callback_max_attempts:
        return end("failed", f"{attempts} attempts, last: {outcome.error}", outcome.status)
    store.record_callback(job_id, status=outcome.status, error=outcome.error)
    metrics.metrics().callbacks.labels("retry").inc()
    pace = Backoff(settings.callback_initial_delay, 2.0, settings.callback_delay_cap)
    countdown = pace.delay(attempts - 1)
    log.info("callback_retry", job_id=job_id, callback_host=host, status=outcome.status, error=outcome.error,
             attempts=attempts, countdown=countdown)
    raise self.retry(countdown=countdown)
