"""The job record and the stores that keep it."""

from bpx_worker.jobs.base import JobStore, Lease
from bpx_worker.jobs.memory import MemoryJobStore
from bpx_worker.jobs.record import (
    FORMAT,
    TERMINAL,
    Attempt,
    AttemptState,
    ErrorCode,
    JobFailure,
    JobRecord,
    JobState,
    StepRecord,
    StepState,
)
from bpx_worker.jobs.store import RedisJobStore

__all__ = [
    "FORMAT",
    "TERMINAL",
    "Attempt",
    "AttemptState",
    "ErrorCode",
    "JobFailure",
    "JobRecord",
    "JobState",
    "JobStore",
    "Lease",
    "MemoryJobStore",
    "RedisJobStore",
    "StepRecord",
    "StepState",
]
