"""One rate limit toward the exchange, shared by every worker process: GCRA in Redis.

The generic cell rate algorithm keeps one number per limit, the theoretical
arrival time (TAT) of the next request. A request asks the script for a send
time: `max(now, TAT - tolerance)`. When that is at most `max_wait` away, the slot
is reserved (TAT moves on by one interval) and the caller waits until then and
sends; otherwise nothing is reserved and the caller is told how long to stay
away (`RateLimited`, re-queued by the engine with that countdown). Slots are
handed out in order, so the wait in a worker slot stays short: about the number
of processes sending at once divided by the rate.

A background request (a poll of a pending withdrawal) may not wait at all: it takes a
slot only when one is free now, and is told to come back otherwise. Foreground requests
(a fresh withdrawal, its balance read, a lookup) queue for their slots up to `max_wait`,
and a queue pushes the TAT ahead of now: so while the limit binds, every slot goes to
foreground requests first, and polls use what they leave.

When the exchange answers 429, `slow_down` pushes the TAT to now + Retry-After
(every process pauses) and halves the rate for `slowdown` seconds.

The time is Redis's own (`TIME`), so clocks of the worker machines do not matter.

Keys (this module is their only owner):

| key                        | type      | holds                                                  |
|----------------------------|-----------|--------------------------------------------------------|
| `bpxw:rate:<name>`         | string PX | the TAT in ms since the epoch (expires once in the past) |
| `bpxw:rate:<name>:slow`    | string PX | present while the rate is halved after a 429           |
| `bpxw:rate:<name>:waits`   | counter   | requests that had to wait for their slot (for tests and operators) |
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from bpx_worker.errors import RateLimited
from bpx_worker.redis_client import redis_client

PREFIX = "bpxw:rate:"

# KEYS: tat, slow, waits. ARGV: interval ms, tolerance ms, max wait ms.
# Returns {granted (1/0), wait ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then interval = interval * 2 end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
if wait > tonumber(ARGV[3]) then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
if wait > 0 then redis.call('INCR', KEYS[3]) end
return {1, wait}
"""
# KEYS: tat, slow. ARGV: pause ms, slowdown ms.
_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local resume = now + tonumber(ARGV[1])
if tat < resume then redis.call('SET', KEYS[1], resume, 'PX', tonumber(ARGV[1]) + 1000) end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
return resume
"""


class RateLimiter(Protocol):
    """What the exchange client needs of a rate limiter."""

    def acquire(self, background: bool = False) -> None:
        """Wait (briefly) for this request's slot, or raise `RateLimited` with how long to stay away.

        A background request never waits: it gets a slot that is free now, or RateLimited.
        """
        ...

    def slow_down(self, retry_after: float | None) -> None:
        """The exchange answered 429: pause every process and lower the rate for a while."""
        ...


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int = 1
    max_wait: float = 2.0
    slowdown: float = 30.0

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1 or self.max_wait < 0 or self.slowdown < 0:
            raise ValueError("a rate limit needs per_second > 0, burst >= 1, max_wait >= 0 and slowdown >= 0")

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.per_second


class RedisRateLimiter:
    """The shared limit (see the module docstring); one instance per process is enough."""

    def __init__(self, client: redis.Redis, limit: Limit, name: str = "exchange",
                 sleep: Callable[[float], None] = time.sleep):
        self.redis = client
        self.limit = limit
        self.keys = [f"{PREFIX}{name}", f"{PREFIX}{name}:slow", f"{PREFIX}{name}:waits"]
        self._sleep = sleep
        self._acquire = client.register_script(_ACQUIRE)
        self._slow_down = client.register_script(_SLOW_DOWN)

    @classmethod
    def from_url(cls, url: str, limit: Limit, socket_timeout: float = 10.0, **connection: Any) -> RedisRateLimiter:
        """A limiter on `url`, failing at the first connection error; `connection` holds the TLS options."""
        return cls(redis_client(url, socket_timeout=socket_timeout, retries=0, decode_responses=False, **connection),
                   limit)

    def acquire(self, background: bool = False) -> None:
        limit = self.limit
        tolerance = limit.interval_ms * (limit.burst - 1)
        max_wait_ms = 0 if background else limit.max_wait * 1000
        granted, wait_ms = self._acquire(keys=self.keys, args=[limit.interval_ms, tolerance, max_wait_ms])
        if not int(granted):
            raise RateLimited(f"exchange rate limit of {limit.per_second:g}/s: next slot in {int(wait_ms)} ms",
                              retry_after=int(wait_ms) / 1000)
        if int(wait_ms) > 0:
            self._sleep(int(wait_ms) / 1000)

    def slow_down(self, retry_after: float | None) -> None:
        pause = retry_after if retry_after is not None and retry_after > 0 else 1.0
        self._slow_down(keys=self.keys[:2], args=[int(pause * 1000), int(self.limit.slowdown * 1000)])

    def waits(self) -> int:
        """How many requests had to wait for their slot since the counter was created."""
        return int(self.redis.get(self.keys[2]) or 0)
