"""The shared rate limit toward the exchange: GCRA in a real (private) Redis; the client obeys it and slows on 429."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
import requests

from bpx_worker.arazzo import HttpRequest
from bpx_worker.errors import RateLimited, TransientError
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.ratelimit import Limit, RedisRateLimiter
from bpx_worker.exchange.signer import Signer
from devtools.local import PrivateRedis
from devtools.sandbox import Sandbox, SandboxConfig

BALANCES = HttpRequest("GET", "/api/v1/capital", "balanceQuery")


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


class Waits:
    """Records the waits a limiter asks for, without sleeping: Redis's clock does not move for them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def limiter(client: redis.Redis, name: str, **limit: float) -> tuple[RedisRateLimiter, Waits]:
    waits = Waits()
    return RedisRateLimiter(client, Limit(**limit), name=name, sleep=waits), waits  # type: ignore[arg-type]


def test_slots_are_handed_out_one_interval_apart_across_limiters(redis_client):
    first, first_waits = limiter(redis_client, "spacing", per_second=10, max_wait=5)
    second, second_waits = limiter(redis_client, "spacing", per_second=10, max_wait=5)  # another process
    started = time.monotonic()
    for _ in range(3):
        first.acquire()
        second.acquire()
    spent = time.monotonic() - started
    waits = sorted(first_waits.seconds + second_waits.seconds)
    # Six requests at 10/s: the first goes now, the sixth 500 ms later, less the time the calls took.
    assert len(waits) == 5 and waits[-1] >= 0.5 - spent - 0.002
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))


def test_a_slot_further_away_than_max_wait_is_not_taken_and_says_when_to_come_back(redis_client):
    busy, _ = limiter(redis_client, "refuse", per_second=2, max_wait=0.6)
    busy.acquire()  # now
    busy.acquire()  # in 0.5 s
    with pytest.raises(RateLimited) as caught:
        busy.acquire()  # in 1 s: more than 0.6 s away
    assert 0.6 < caught.value.retry_after <= 1.0
    assert isinstance(caught.value, TransientError)  # nothing was sent


def test_a_background_request_takes_only_a_free_slot_and_yields_while_fresh_requests_queue(redis_client):
    fresh, fresh_waits = limiter(redis_client, "priority", per_second=2, max_wait=5)
    poll, poll_waits = limiter(redis_client, "priority", per_second=2, max_wait=5)  # another process
    poll.acquire(background=True)  # nothing queued: the free slot, at once
    assert poll_waits.seconds == []
    fresh.acquire()  # in 0.5 s
    fresh.acquire()  # in 1 s
    with pytest.raises(RateLimited) as caught:
        poll.acquire(background=True)  # fresh requests queue: the poll does not join the queue...
    assert 0.5 < caught.value.retry_after <= 1.5  # ...and is told when the queue will have drained
    fresh.acquire()  # so the next fresh request's slot is the one right after the queue, not after the poll
    assert len(fresh_waits.seconds) == 3 and fresh_waits.seconds[-1] <= 1.5
    with pytest.raises(RateLimited):
        poll.acquire(background=True)


def test_burst_lets_that_many_go_at_once(redis_client):
    bursty, waits = limiter(redis_client, "burst", per_second=1, burst=3, max_wait=0)
    for _ in range(3):
        bursty.acquire()
    assert waits.seconds == []
    with pytest.raises(RateLimited):
        bursty.acquire()


def test_after_a_429_everyone_pauses_and_the_rate_halves(redis_client):
    one, _ = limiter(redis_client, "slow", per_second=10, max_wait=5, slowdown=30)
    other, other_waits = limiter(redis_client, "slow", per_second=10, max_wait=5, slowdown=30)
    started = time.monotonic()
    one.slow_down(2.0)
    other.acquire()
    spent = time.monotonic() - started
    other.acquire()
    assert other_waits.seconds[0] >= 2.0 - spent - 0.002  # paused until Retry-After
    assert other_waits.seconds[1] - other_waits.seconds[0] >= 0.19  # 200 ms apart: half of 10/s


def test_the_client_waits_for_its_slot_and_slows_everyone_down_on_429(redis_client):
    signer, _ = Signer.generate()
    server = Sandbox(SandboxConfig(api_key=signer.api_key, balances={"USDC": Decimal("100")}))
    server.start()
    shared, waits = limiter(redis_client, "client", per_second=5, max_wait=5, slowdown=10)
    client = BackpackClient(server.url, signer, limiter=shared)
    try:
        client.send(BALANCES)
        client.send(BALANCES)
        assert len(waits.seconds) == 1 and waits.seconds[0] > 0.1  # the second request waited for its slot
        requests.post(server.url + "/_sandbox/faults", json={"p_429": 1.0}, timeout=5).raise_for_status()
        with pytest.raises(TransientError):
            client.send(BALANCES)
        other, other_waits = limiter(redis_client, "client", per_second=5, max_wait=5, slowdown=10)
        other.acquire()
        assert other_waits.seconds and other_waits.seconds[0] > 0.5  # the sandbox's Retry-After: 1, less the time since
    finally:
        client.close()
        server.stop()
