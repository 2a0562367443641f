"""What the engine needs of a job store, whichever keeps the records (Redis, or memory in process)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bpx_worker.jobs.record import JobRecord

Change = Callable[[JobRecord], None]


@dataclass(frozen=True)
class Lease:
    """The right to change one job, until a newer lease (a higher fencing token) is granted."""

    job_id: str
    holder: str
    token: int


@dataclass(frozen=True)
class Taken:
    """What taking a job's lease gives: the lease and the record, or how long another holder keeps it."""

    lease: Lease | None
    record: JobRecord | None = None
    wait: float = 0.0  # seconds left on another run's lease, when `lease` is None


class JobStore(Protocol):
    def take(self, job_id: str, ttl: float) -> Taken:
        """The lease and the record in one step; raises JobNotFound (lease released) when there is no record."""
        ...

    def require(self, job_id: str) -> JobRecord:
        """The record; raises JobNotFound when there is none."""
        ...

    def acquire(self, job_id: str, ttl: float) -> Lease | None:
        """A lease with a fencing token newer than any before, or None while another holds one."""
        ...

    def lease_ttl(self, job_id: str) -> float:
        """Seconds left on the lease someone holds on the job (0 when none)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the lease back (if still held); changes staged and not flushed are dropped."""
        ...

    def update(self, lease: Lease, change: Change, event: dict[str, Any] | None = None, *,
               lease_left: float | None = None) -> JobRecord:
        """Apply `change` while `lease` holds the newest token (else LeaseLost); returns the new record.

        With `lease_left`, the write also needs the lease itself held with at least that many seconds
        left (else LeaseExpiring, nothing written): what comes after the write must finish inside it.
        """
        ...

    def stage(self, lease: Lease, change: Change, event: dict[str, Any] | None = None) -> JobRecord:
        """Apply `change` to the lease holder's copy of the record, to be written by the next `flush`."""
        ...

    def flush(self, lease: Lease, *, lease_left: float | None = None, release: bool = False) -> None:
        """Write what was staged in one fenced write (as `update`); with `release`, give the lease back in it."""
        ...

    def sealed_2fa(self, job_id: str) -> bytes | None: ...

    def drop_sealed_2fa(self, job_id: str) -> None: ...
