"""The one place a redis-py client of the product is built: URL, timeouts, retries, health checks, TLS.

The job store, the batch store, the exchange's rate limiter and the intake's readiness probe each
need a client with the same safety options; building them here keeps those options from drifting
apart. What differs between them is a choice each caller makes explicitly: how long a socket may
wait, and how many retries ride out a Redis restart (a worker's store is patient; a command or a
probe fails fast).

The TLS options are not computed here: `Settings.redis_ssl_options()` (config) computes them once,
for these clients and for Celery's broker and result backend alike, and callers pass them in. This
module reads no settings, so it needs nothing of the product but redis-py.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# A worker's stores ride out a short Redis restart instead of failing the step: 15 retries with the
# backoff below (0.1 s doubling, capped at 2 s) wait about 25 s in all, besides the socket timeouts.
PATIENT_RETRIES = 15
# A connection idle this long is checked with a PING before it is used again (one a load balancer
# or Redis itself closed is replaced instead of failing the command).
HEALTH_CHECK_INTERVAL = 15


def redis_client(
    url: str, *, socket_timeout: float, retries: int, connect_timeout: float | None = None,
    health_check_interval: float = HEALTH_CHECK_INTERVAL, decode_responses: bool = True, **tls: Any,
) -> redis.Redis:
    """A client of the Redis at `url` (redis:// or rediss://); it connects on first use.

    `socket_timeout` bounds each answer and, unless `connect_timeout` is given, each connect.
    `retries` is how many times a command is retried after a connection error or timeout, with
    exponential backoff (0: fail at the first). `tls` holds the TLS options, as
    `Settings.redis_ssl_options()` gives them ({} for redis://).
    """
    return redis.Redis.from_url(
        url, decode_responses=decode_responses, socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout or socket_timeout, health_check_interval=health_check_interval,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **tls,
    )
