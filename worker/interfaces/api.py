"""The Python API for upstream services: submit a withdrawal, read it, wait for it.

`get_job` and `wait_for` return the typed `JobRecord` (docs/design.md, "The job record");
the errors a caller handles are `InvalidRequest` (bad input, nothing written),
`IdempotencyConflict` (same key, another request), `JobNotFound` and
`ServiceUnavailable`, all under `bpx_worker.errors.WorkerError`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bpx_worker.config import settings as config_settings
from bpx_worker.errors import JobError
from bpx_worker.exchange import twofactor
from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.tasks.app import job_store
from bpx_worker.tasks.withdrawal import workflow_chain
from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.withdrawal.request import SafetyLimits, WithdrawalRequest, parse_request

__all__ = ["JobRecord", "JobState", "get_job", "submit_request", "submit_withdrawal", "validate_withdrawal", "wait_for"]


def _store(store: RedisJobStore | None) -> RedisJobStore:
    return store if store is not None else job_store()


def validate_withdrawal(
    symbol: str,
    blockchain: str,
    address: str,
    quantity: str | Decimal,
    *,
    idempotency_key: str | None = None,
    two_factor_token: str | None = None,
    window: int | str | None = None,
    settings: config_settings.Settings | None = None,
) -> WithdrawalRequest:
    """The one validation of a withdrawal request, with the operator's limits; writes nothing.

    Raises `InvalidRequest` naming each bad field. `submit_withdrawal` and the
    CLI's `run-inprocess` both go through here.
    """
    settings = settings or config_settings.get()
    fields: dict[str, Any] = {"symbol": symbol, "blockchain": blockchain, "address": address, "quantity": quantity}
    for name, value in (("idempotency_key", idempotency_key), ("two_factor_token", two_factor_token),
                        ("window", window)):
        if value is not None:
            fields[name] = value
    return parse_request(fields, SafetyLimits(max_quantity=settings.max_quantity,
                                              allowed_destinations=settings.allowed_destinations))


def submit_withdrawal(
    symbol: str,
    blockchain: str,
    address: str,
    quantity: str | Decimal,
    *,
    idempotency_key: str | None = None,
    two_factor_token: str | None = None,
    window: int | str | None = None,
    store: RedisJobStore | None = None,
) -> str:
    """Validate and enqueue a withdrawal; returns the job id.

    The same idempotency key with the same request (symbol, blockchain, address,
    quantity compared by value, window) returns the same job and never creates a
    second withdrawal. The same key with a different request raises
    `IdempotencyConflict` naming the fields that differ. Bad input raises
    `InvalidRequest` naming each field. In both cases nothing is written.
    """
    request = validate_withdrawal(symbol, blockchain, address, quantity, idempotency_key=idempotency_key,
                                  two_factor_token=two_factor_token, window=window)
    return submit_request(request, store=store).job_id


@dataclass(frozen=True)
class Submission:
    job_id: str
    created: bool  # False: the idempotency key already named this job, for the same request


def submit_request(request: WithdrawalRequest, *, store: RedisJobStore | None = None,
                   submitted_by: str | None = None, callback_url: str | None = None) -> Submission:
    """Enqueue a request `validate_withdrawal` (or `parse_request`) accepted; says whether the job is new.

    `submitted_by` and `callback_url` are the HTTP intake's (the token's name,
    and where to report the end, checked against the allow-list by the caller):
    they are part of the request, so the same key from another token, or with
    another callback, raises `IdempotencyConflict` like another amount would.
    """
    key = request.idempotency_key or uuid.uuid4().hex
    client_id = withdrawal.client_id(key)
    inputs = {**request.public_inputs(), "clientId": client_id}
    fingerprint: dict[str, Any] = dict(request.fingerprint())
    for name, value in (("submitted_by", submitted_by), ("callback_url", callback_url)):
        if value is not None:  # absent for the Python API and the CLI, so their fingerprints stay as they were
            fingerprint[name] = value
    sealed = None
    if request.two_factor_token is not None:
        sealed = twofactor.seal(request.two_factor_token.get_secret_value(), config_settings.get().api_key())
    jobs = _store(store)
    job_id, created = jobs.create(key, client_id, inputs, sealed, request=fingerprint, submitted_by=submitted_by,
                                  callback_url=callback_url)
    if created or jobs.require(job_id).state == JobState.QUEUED:
        # Enqueue again when a previous submit crashed before enqueueing; a
        # duplicate chain is harmless (steps are idempotent and leased).
        workflow_chain(job_id).apply_async()
    return Submission(job_id, created)


def get_job(job_id: str, store: RedisJobStore | None = None) -> JobRecord:
    """The job record; raises JobError when there is none."""
    return _store(store).require(job_id)


def wait_for(job_id: str, timeout: float = 300.0, store: RedisJobStore | None = None) -> JobRecord:
    """Block until the job ends (following its event stream); returns the final record."""
    jobs = _store(store)
    deadline = time.monotonic() + timeout
    last = "0-0"
    while True:
        record = jobs.require(job_id)
        if record.terminal:
            return record
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobError(f"job {job_id} still {record.state} after {timeout:g}s")
        events = jobs.events(job_id, last, block_ms=int(min(remaining, 5.0) * 1000))
        if events:
            last = events[-1][0]
