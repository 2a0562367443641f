"""The batch record: what a payout run is, row by row. Read by `batch status`, `batch report` and the tracker."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class BatchState(StrEnum):
    SUBMITTING = "submitting"  # rows are being turned into jobs
    RUNNING = "running"  # every row is submitted; jobs are running
    ENDED = "ended"  # every row's job has ended (the results are final)
    REFUSED = "refused"  # refused before any row was sent (over the balance)


class RowStatus(StrEnum):
    PENDING = "pending"  # accepted, no job yet
    SUBMITTED = "submitted"  # this batch's job pays the row
    ALREADY_PAID = "already_paid"  # the row's key paid the same payout before (another batch); nothing new is paid
    REFUSED = "refused"  # the row's key was used for a different payout
    INVALID = "invalid"  # a bad row, skipped with --skip-invalid


class BatchRecord(BaseModel):
    """The head of a batch, kept as a Redis hash (one field per attribute, JSON values)."""

    batch_id: str
    namespace: str
    source: str  # the file's name as submitted
    sha256: str
    format: str
    state: BatchState = BatchState.SUBMITTING
    rows: int = 0  # rows of the file, bad ones included
    totals: dict[str, str] = Field(default_factory=dict)  # to pay in this batch, per symbol (new rows only)
    skip_invalid: bool = False
    allow_partial: bool = False
    schedule: str | None = None  # the schedule whose inbox run submitted it
    report_path: str | None = None  # where the tracker writes the results file when the batch ends
    also_report: list[str] = Field(default_factory=list)  # the same bytes arrived again under these names
    refusal: str | None = None
    created_at: float
    submitter_seen_at: float | None = None
    tracked_at: float | None = None
    tracker: str | None = None  # the one live tracker chain (a newer one supersedes it)
    finished_at: float | None = None

    def to_hash(self, *names: str) -> dict[str, str]:
        data = self.model_dump(mode="json", include=set(names) if names else None)
        return {k: json.dumps(v) for k, v in data.items()}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BatchRecord:
        return cls.model_validate({k: json.loads(v) for k, v in raw.items()})

    @property
    def open(self) -> bool:
        return self.state in (BatchState.SUBMITTING, BatchState.RUNNING)


class BatchRow(BaseModel):
    """One row of the file as the batch handles it."""

    line: int
    key: str | None = None
    symbol: str | None = None
    blockchain: str | None = None
    address: str | None = None
    quantity: str | None = None
    status: RowStatus
    job_id: str | None = None
    reason: str | None = None  # why refused or invalid; for already paid: which batch and line paid it
    paid_by: str | None = None  # batch id of an earlier batch that paid this key


class RowEnd(BaseModel):
    """How a row's job ended, written once by the tracker."""

    state: str
    withdrawal_id: str | None = None
    error_code: str | None = None
    error: str | None = None


class RowKey(BaseModel):
    """The long-lived memory of a row key: what it paid, in which batch, by which job."""

    fingerprint: dict[str, Any]
    batch: str
    line: int
    job: str | None = None
    state: str | None = None
    withdrawal_id: str | None = None


class RowResult(BaseModel):
    """A row's result, for the progress bar, the summary and the results file."""

    line: int
    key: str | None
    symbol: str | None
    quantity: str | None
    job_id: str | None
    state: str  # a job state, or pending / refused / invalid
    withdrawal_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    status: RowStatus
    ended: bool = False
