"""A job store in memory, for the in-process run: the same engine, without Redis."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from bpx_worker.errors import JobNotFound, LeaseExpiring, LeaseLost
from bpx_worker.jobs.base import Change, Lease, Taken
from bpx_worker.jobs.record import JobRecord


class MemoryJobStore:
    """One process, one thread: leases and fencing behave as in Redis, minus persistence."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}  # JSON, so a change is applied to a copy as in Redis
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._fences: dict[str, int] = {}
        self._sealed: dict[str, bytes] = {}
        self._staged: dict[str, tuple[str, list[dict[str, Any]]]] = {}  # holder -> (record JSON, events)

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

    def take(self, job_id: str, ttl: float) -> Taken:
        lease = self.acquire(job_id, ttl)
        if lease is None:
            return Taken(None, wait=self.lease_ttl(job_id))
        try:
            return Taken(lease, self.require(job_id))
        except JobNotFound:
            self.release(lease)
            raise

    def lease_ttl(self, job_id: str) -> float:
        _, until = self._leases.get(job_id, ("", 0.0))
        return max(until - time.monotonic(), 0.0)

    def release(self, lease: Lease) -> None:
        self._staged.pop(lease.holder, None)
        if self._leases.get(lease.job_id, ("", 0.0))[0] == lease.holder:
            del self._leases[lease.job_id]

    def stage(self, lease: Lease, change: Change, event: dict[str, Any] | None = None) -> JobRecord:
        raw, events = self._staged.get(lease.holder, (None, []))
        record = JobRecord.from_json(raw) if raw is not None else self.require(lease.job_id)
        change(record)
        record.updated_at = time.time()
        added = [{**event, "at": record.updated_at}] if event else []
        self._staged[lease.holder] = (record.to_json(), [*events, *added])
        return record

    def flush(self, lease: Lease, *, lease_left: float | None = None, release: bool = False) -> None:
        staged = self._staged.get(lease.holder)
        if staged is not None:
            if self._fences.get(lease.job_id) != lease.token:
                raise LeaseLost(f"job {lease.job_id}: a newer run holds the job")
            if lease_left is not None and (self._leases.get(lease.job_id, ("", 0.0))[0] != lease.holder
                                           or self.lease_ttl(lease.job_id) < lease_left):
                raise LeaseExpiring(f"job {lease.job_id}: the lease has less than {lease_left:g}s left")
            raw, events = self._staged.pop(lease.holder)
            self.records[lease.job_id] = raw
            self.events[lease.job_id].extend(events)
            if JobRecord.from_json(raw).terminal:
                self._sealed.pop(lease.job_id, None)
        if release:
            self.release(lease)

    def update(self, lease: Lease, change: Change, event: dict[str, Any] | None = None, *,
               lease_left: float | None = None) -> JobRecord:
        previous = self._staged.get(lease.holder)
        record = self.stage(lease, change, event)
        try:
            self.flush(lease, lease_left=lease_left)
        except LeaseExpiring:
            if previous is None:
                del self._staged[lease.holder]
            else:
                self._staged[lease.holder] = previous
            raise
        return record

    def sealed_2fa(self, job_id: str) -> bytes | None:
        return self._sealed.get(job_id)

    def drop_sealed_2fa(self, job_id: str) -> None:
        self._sealed.pop(job_id, None)
