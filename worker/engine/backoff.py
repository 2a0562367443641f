"""Backoff: a checked value object whose delays come from tenacity's wait strategies.

The same strategy feeds Celery's countdowns and the in-process run's sleeps,
so there is one retry mechanism. `delay(n)` is the wait after the n-th failed
try (0-based): `initial * factor**n`, capped at `max_delay`; with `jitter` it
is drawn uniformly from [delay/2, delay] ("equal jitter"), so retries of many
jobs spread out and no delay collapses to zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

_RETRYING = Retrying()


@dataclass(frozen=True)
class Backoff:
    initial: float
    factor: float
    max_delay: float
    max_attempts: int | None = None
    jitter: bool = False
    wait: wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.max_delay <= 0:
            raise ValueError("backoff needs initial >= 0, factor >= 1 and max_delay > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.jitter:
            half = {"multiplier": self.initial / 2, "exp_base": self.factor, "max": self.max_delay / 2}
            wait: wait_base = wait_exponential(**half) + wait_random_exponential(**half)
        else:
            wait = wait_exponential(multiplier=self.initial, exp_base=self.factor, max=self.max_delay)
        object.__setattr__(self, "wait", wait)

    def delay(self, failures: int) -> float:
        """Seconds to wait after failed try number `failures` (0-based)."""
        state = RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = failures + 1
        return float(self.wait(state))

    def exhausted(self, attempts_made: int) -> bool:
        return self.max_attempts is not None and attempts_made >= self.max_attempts
