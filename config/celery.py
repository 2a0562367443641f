"""Celery settings, derived from `config.settings`. Each delivery choice says why.

Celery delivers at least once; these settings make "at least once" the only
failure mode (never "lost"), and the job store's leases and records make a
second delivery harmless.
"""

from __future__ import annotations

from typing import Any

from bpx_worker.config.settings import Settings

QUEUE = "withdrawals"


def celery_settings(s: Settings) -> dict[str, Any]:
    redis_options = {
        # A dead Redis connection must raise, not hang a worker forever.
        "socket_timeout": s.redis_socket_timeout,
        "socket_connect_timeout": s.redis_socket_timeout,
        "health_check_interval": 25,
    }
    # rediss://: the same verified TLS for the broker and the result backend (Celery
    # refuses a rediss:// URL without ssl_cert_reqs).
    tls = s.redis_ssl_options()
    return {
        "broker_url": s.redis_url,
        "result_backend": s.redis_url,
        "broker_use_ssl": tls or False,
        "redis_backend_use_ssl": tls or None,
        # Redis redelivers a message not acked within the visibility timeout. It is
        # set in all three places Celery reads it (celery #7651), and Settings
        # refuses any retry or poll countdown that is not below it, so a waiting
        # ETA message is never redelivered while a worker still holds it.
        "broker_transport_options": {
            "visibility_timeout": s.visibility_timeout,
            # Look for expired unacked messages often enough to honour a short timeout.
            "unacked_restore_interval": max(1, min(10, s.visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
            **redis_options,
        },
        "result_backend_transport_options": {"visibility_timeout": s.visibility_timeout, **redis_options},
        "visibility_timeout": s.visibility_timeout,
        "redis_socket_timeout": s.redis_socket_timeout,
        "redis_socket_connect_timeout": s.redis_socket_timeout,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 25,
        "result_backend_always_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Ack after the step ran, and requeue when the process running it dies:
        # a crash never loses a step. Steps are safe to run twice (job store).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per process: a crash strands as little as possible.
        "worker_prefetch_multiplier": 1,
        # On connection loss the late ack is gone and the message comes back:
        # stop the running copy instead of letting two run.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # On SIGTERM, give running steps time to finish and requeue the rest.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # A step never outlives its lease: the hard limit kills it first.
        "task_soft_time_limit": s.task_soft_time_limit,
        "task_time_limit": s.task_time_limit,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": s.job_retention,
        # The job record is the result; Celery's own results would only duplicate
        # it (and make every submitter subscribe to result channels).
        "task_ignore_result": True,
        # Flower: see tasks as soon as they are sent and while they run.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        "worker_concurrency": s.worker_concurrency,
        # The safety net: re-dispatch jobs whose messages were lost (for example
        # a Redis that lost its last second of writes). Steps are idempotent.
        "beat_schedule": {
            "sweep-stalled-jobs": {"task": "withdrawal.sweep", "schedule": s.sweep_interval},
        },
    }
