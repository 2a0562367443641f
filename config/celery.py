"""Celery settings, derived from `config.settings`. Each delivery choice says why.

Celery delivers at least once; these settings make "at least once" the only
failure mode (never "lost"), and the job store's leases and records make a
second delivery harmless.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu import Queue

from bpx_worker.config.settings import PayoutSchedule, Settings

QUEUE = "withdrawals"
# Woken polls of pending withdrawals: a queue of their own, so a fresh job is fetched between them
# (a worker consuming both queues takes from each in turn) instead of waiting behind thousands.
POLLS_QUEUE = "withdrawal.polls"
# Batch bookkeeping (balance reads for a submitter, trackers, inbox runs) has its own queue, so it never
# waits behind a batch's thousands of step messages. Workers consume all three (task_queues).
BATCH_QUEUE = "batches"
# RedBeat keeps the schedule and its lock under this prefix (see the table of Redis keys in docs/payouts.md).
REDBEAT_PREFIX = "bpxw:redbeat:"


def schedule_of(schedule: PayoutSchedule) -> Any:
    """A payout schedule's timing for beat: a crontab (UTC) or an interval in seconds."""
    if schedule.cron is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.cron.split()
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    return schedule.every


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        # The safety net: re-dispatch jobs whose messages were lost (for example
        # a Redis that lost its last second of writes). Steps are idempotent.
        "sweep-stalled-jobs": {"task": "withdrawal.sweep", "schedule": s.sweep_interval},
        # Batches whose tracker went silent get a new one.
        "sweep-batches": {"task": "batch.sweep", "schedule": s.sweep_interval},
    }
    for schedule in s.payout_schedules:
        entries[f"payout-schedule-{schedule.name}"] = {
            "task": "batch.runSchedule", "schedule": schedule_of(schedule), "args": [schedule.name],
            # A run that could not start before the next one is due is dropped, not stacked.
            "options": {"expires": schedule.every if schedule.every is not None else 300},
        }
    return entries


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
        # A step that ends its job failed / needs_review raises JobEnded after the record is
        # written: that message is done and is acked, never requeued (Celery's default, stated).
        "task_acks_on_failure_or_timeout": True,
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
        # Flower: see tasks as soon as they are sent and while they run. TASK_EVENTS=false saves a
        # serialised message and a PUBLISH per task state (about 8 Redis commands a job) where no
        # Flower listens.
        "worker_send_task_events": s.task_events,
        "task_send_sent_event": s.task_events,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        "worker_pool": s.worker_pool,
        "worker_concurrency": s.concurrency(),
        # A worker started without -Q consumes every queue: fresh steps, woken polls, batch bookkeeping.
        "task_queues": [Queue(QUEUE), Queue(POLLS_QUEUE), Queue(BATCH_QUEUE)],
        "task_routes": {"batch.*": {"queue": BATCH_QUEUE}, "polls.*": {"queue": POLLS_QUEUE}},
        # Beat runs on RedBeat: the schedule and a lock live in Redis, so when two beats are started exactly one
        # acts (the other waits for the lock); a beat that dies is replaced once its lock expires.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_schedule": beat_schedule(s),
        "beat_max_loop_interval": s.beat_max_interval,
        "redbeat_redis_url": s.redis_url,
        "redbeat_redis_options": {"socket_timeout": s.redis_socket_timeout,
                                  "socket_connect_timeout": s.redis_socket_timeout, "retry_period": 30},
        "redbeat_key_prefix": REDBEAT_PREFIX,
        "redbeat_lock_timeout": int(5 * s.beat_max_interval),
    }
