"""Baseline A of the benchmark: a bare Celery chain of three no-op tasks, the ceiling Celery itself sets.

The app takes the product's Celery settings unchanged (`config/celery.py`: late ack, reject on worker
lost, prefetch 1, events, time limits, the same Redis and queue), so the only difference from the
product is the work inside the tasks. The last task records when the chain ended (one HSET), the least
a chain can do to say it finished.

    celery -A benchmarks.noop_app worker ...
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from celery import Celery, chain
from celery.canvas import Signature

from bpx_worker.config import settings as config_settings
from bpx_worker.config.celery import celery_settings

DONE_KEY = "bench:noop:done"

app = Celery("bench_noop")
app.config_from_object(celery_settings(config_settings.get()))
app.conf.beat_schedule = {}


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(config_settings.get().redis_url)


@app.task(name="bench.noop.first")
def first(chain_id: str) -> None:
    """Nothing: the first link."""


@app.task(name="bench.noop.second")
def second(chain_id: str) -> None:
    """Nothing: the middle link."""


@app.task(name="bench.noop.last")
def last(chain_id: str) -> None:
    """Record the end of the chain."""
    _redis().hset(DONE_KEY, chain_id, repr(time.time()))


def noop_chain(chain_id: str) -> Signature:
    """Three immutable signatures carrying one id, like the product's chain."""
    return chain(first.si(chain_id), second.si(chain_id), last.si(chain_id))
