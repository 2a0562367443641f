"""Backoff policies: checked value objects with one pure `attempt -> delay` function."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: delay(n) = min(initial * factor**n, max_delay).

    With `jitter`, the delay is drawn uniformly from [delay/2, delay] ("equal
    jitter"): retries of many jobs spread out, and no delay collapses to zero.
    """

    initial: float
    factor: float
    max_delay: float
    max_attempts: int | None = None
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.max_delay <= 0:
            raise ValueError("backoff needs initial >= 0, factor >= 1 and max_delay > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        base = min(self.initial * self.factor**attempt, self.max_delay)
        if not self.jitter:
            return base
        return (rng or random).uniform(base / 2, base)

    def exhausted(self, attempts_made: int) -> bool:
        return self.max_attempts is not None and attempts_made >= self.max_attempts


def retry_policy(settings) -> Backoff:
    """Transient failures of any step."""
    return Backoff(
        settings.retry_initial_delay,
        settings.retry_backoff_factor,
        settings.retry_max_delay,
        settings.retry_max_attempts,
        settings.retry_jitter,
    )


def reconcile_policy(settings) -> Backoff:
    """Polling the withdrawal history until the withdrawal is recorded and settled."""
    return Backoff(settings.reconcile_initial_delay, settings.reconcile_backoff_factor, settings.reconcile_max_delay)
