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


class JobStore(Protocol):
    def require(self, job_id: str) -> JobRecord:
        """The record; raises JobNotFound when there is none."""
        ...

    def acquire(self, job_id: str, ttl: float) -> Lease | None:
        """A lease with a fencing token newer than any before, or None while another holds one."""
        ...

    def lease_ttl(self, job_id: str) -> float:
        """Seconds left on the lease someone holds on the job (0 when none)."""
        ...

    def release(self, lease: Lease) -> None: ...

    def update(self, lease: Lease, change: Change, event: dict[str, Any] | None = None) -> JobRecord:
        """Apply `change` while `lease` holds the newest token (else LeaseLost); returns the new record."""
        ...

    def sealed_2fa(self, job_id: str) -> bytes | None: ...

    def drop_sealed_2fa(self, job_id: str) -> None: ...
