"""A job store in memory, for the in-process run: the same engine, without Redis."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from bpx_worker.errors import JobNotFound, LeaseLost
from bpx_worker.jobs.base import Change, Lease
from bpx_worker.jobs.record import JobRecord


class MemoryJobStore:
    """One process, one thread: leases and fencing behave as in Redis, minus persistence."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}  # JSON, so a change is applied to a copy as in Redis
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._fences: dict[str, int] = {}
        self._sealed: dict[str, bytes] = {}

    def create(self, idempotency_key: str, client_id: str, inputs: dict[str, Any],
               sealed_2fa: bytes | None = None) -> str:
        now = time.time()
        record = JobRecord(job_id=uuid.uuid4().hex, idempotency_key=idempotency_key, client_id=client_id,
                           inputs=inputs, created_at=now, updated_at=now)
        self.records[record.job_id] = record.to_json()
        self.events[record.job_id] = [{"event": "queued", "state": "queued", "at": now}]
        if sealed_2fa is not None:
            self._sealed[record.job_id] = sealed_2fa
        return record.job_id

    def require(self, job_id: str) -> JobRecord:
        if job_id not in self.records:
            raise JobNotFound(f"no job {job_id}")
        return JobRecord.from_json(self.records[job_id])

    def acquire(self, job_id: str, ttl: float) -> Lease | None:
        if self.lease_ttl(job_id) > 0:
            return None
        holder = secrets.token_hex(8)
        self._leases[job_id] = (holder, time.monotonic() + ttl)
        self._fences[job_id] = self._fences.get(job_id, 0) + 1
        return Lease(job_id, holder, self._fences[job_id])

    def lease_ttl(self, job_id: str) -> float:
        _, until = self._leases.get(job_id, ("", 0.0))
        return max(until - time.monotonic(), 0.0)

    def release(self, lease: Lease) -> None:
        if self._leases.get(lease.job_id, ("", 0.0))[0] == lease.holder:
            del self._leases[lease.job_id]

    def update(self, lease: Lease, change: Change, event: dict[str, Any] | None = None) -> JobRecord:
        if self._fences.get(lease.job_id) != lease.token:
            raise LeaseLost(f"job {lease.job_id}: a newer run holds the job")
        record = self.require(lease.job_id)
        change(record)
        record.updated_at = time.time()
        self.records[lease.job_id] = record.to_json()
        if event:
            self.events[lease.job_id].append({**event, "at": record.updated_at})
        if record.terminal:
            self._sealed.pop(lease.job_id, None)
        return record

    def sealed_2fa(self, job_id: str) -> bytes | None:
        return self._sealed.get(job_id)

    def drop_sealed_2fa(self, job_id: str) -> None:
        self._sealed.pop(job_id, None)
