"""The one factory of Redis clients: each client keeps its timeouts and retries, and every one gets TLS.

Nothing here connects: redis-py connects on first use, and the options are read from the client.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis

from bpx_worker.batches.store import BatchStore
from bpx_worker.exchange.ratelimit import Limit, RedisRateLimiter
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.redis_client import PATIENT_RETRIES, redis_client

URL = "rediss://:pw@redis.internal:6380/0"
TLS: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ssl/redis-ca.pem"}


def options(client: redis.Redis) -> dict[str, Any]:
    return client.connection_pool.connection_kwargs


def retries(client: redis.Redis) -> int:
    retry = options(client)["retry"]
    assert set(options(client)["retry_on_error"]) == {redis.ConnectionError, redis.TimeoutError}
    return int(retry.get_retries())


def test_the_factory_passes_timeouts_retries_health_checks_and_tls():
    client = redis_client(URL, socket_timeout=5.0, connect_timeout=2.0, retries=1, **TLS)
    got = options(client)
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert (got["socket_timeout"], got["socket_connect_timeout"], got["health_check_interval"]) == (5.0, 2.0, 15)
    assert got["ssl_ca_certs"] == TLS["ssl_ca_certs"] and got["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert got["decode_responses"] is True and retries(client) == 1


def test_the_connect_timeout_defaults_to_the_socket_timeout():
    got = options(redis_client("redis://h:6379/0", socket_timeout=7.0, retries=0))
    assert got["socket_connect_timeout"] == 7.0 and "ssl_ca_certs" not in got


@pytest.mark.parametrize("build, expected", [
    # Workers' stores ride out a Redis restart; commands give up within seconds; the limiter fails at once.
    (lambda: RedisJobStore.from_url(URL, 60, 10.0, **TLS).redis, (10.0, 10.0, PATIENT_RETRIES, True)),
    (lambda: RedisJobStore.from_url(URL, 60, 5.0, connect_timeout=2.0, retries=1, **TLS).redis, (5.0, 2.0, 1, True)),
    (lambda: BatchStore.from_url(URL, 60, 10.0, **TLS).redis, (10.0, 10.0, PATIENT_RETRIES, True)),
    (lambda: RedisRateLimiter.from_url(URL, Limit(5), 10.0, **TLS).redis, (10.0, 10.0, 0, False)),
], ids=["job store", "interactive job store", "batch store", "rate limiter"])
def test_each_client_keeps_its_options_and_gets_tls(build, expected):
    client = build()
    got = options(client)
    assert (got["socket_timeout"], got["socket_connect_timeout"], retries(client), got["decode_responses"]) == expected
    assert got["health_check_interval"] == 15
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert got["ssl_ca_certs"] == TLS["ssl_ca_certs"] and got["ssl_cert_reqs"] == ssl.CERT_REQUIRED
