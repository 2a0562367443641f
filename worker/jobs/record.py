"""The job record: the contract that upstream services and operators read.

Every reader and writer goes through `JobRecord`; docs/design.md ("The job record")
documents the format. `FORMAT` is written into every record; a record written before the
field existed (format 0) is read and upgraded on the fly, so a job started by
an older worker finishes under this one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT = 1


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.NEEDS_REVIEW})


class StepState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"


class AttemptState(StrEnum):
    """One try at a step that is sent at most once (a non-idempotent request)."""

    SENDING = "sending"  # recorded before the request left: the outcome is unknown until told otherwise
    NOT_SENT = "not_sent"  # the exchange certainly did not process it (refused connection, 429)
    AMBIGUOUS = "ambiguous"  # may have been processed (timeout, reset or 5xx after sending)
    ACCEPTED = "accepted"  # answered 2xx
    REJECTED = "rejected"  # refused with a 4xx

    @property
    def may_have_reached(self) -> bool:
        """Whether the exchange may hold what this attempt sent: then it is never sent again."""
        return self in (AttemptState.SENDING, AttemptState.AMBIGUOUS, AttemptState.ACCEPTED)


class ErrorCode(StrEnum):
    """The worker's own error codes. A refusal by the exchange keeps the exchange's code instead."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"  # the balance read shows less than the quantity
    CRITERIA_NOT_MET = "CRITERIA_NOT_MET"  # a 2xx answer that fails the step's success criteria
    TRANSIENT_EXHAUSTED = "TRANSIENT_EXHAUSTED"  # transient failures used up the retry budget
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"  # a request that may have landed could not be found
    LOOKUP_MISMATCH = "LOOKUP_MISMATCH"  # found by clientId, but not what this job asked for
    STATUS_NEEDS_REVIEW = "STATUS_NEEDS_REVIEW"  # the exchange reports a status a human must handle
    RECONCILE_DEADLINE = "RECONCILE_DEADLINE"  # not settled before the deadline
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # above this worker's MAX_QUANTITY
    DESTINATION_NOT_ALLOWED = "DESTINATION_NOT_ALLOWED"  # outside this worker's ALLOWED_DESTINATIONS
    TWO_FACTOR_UNREADABLE = "TWO_FACTOR_UNREADABLE"  # the sealed token does not open with this worker's key
    CONFIGURATION = "CONFIGURATION"  # the worker's configuration cannot run the step
    CANCELLED = "CANCELLED"  # an operator ended the job before its withdrawal request was sent


class Attempt(BaseModel):
    n: int
    state: AttemptState
    at: float
    error: str | None = None


class StepRecord(BaseModel):
    state: StepState = StepState.RUNNING
    runs: int = 0
    started_at: float
    ended_at: float | None = None
    seconds: float | None = None
    status_code: int | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    transient_failures: int = 0
    last_error: str | None = None
    # a polled step
    polls: int = 0
    last_seen_status: str | None = None
    # a step sent at most once
    attempts: list[Attempt] = Field(default_factory=list)
    lookups: int = 0
    failed_lookups: int = 0
    found_by_lookup: bool = False
    # a step held before sending (the kill switch): what it waits on, and since when
    waiting_on: str | None = None
    waiting_since: float | None = None


class JobFailure(BaseModel):
    """Why a job ended `failed` or `needs_review`."""

    model_config = ConfigDict(extra="allow")  # room for detail such as what a lookup found

    step: str
    code: str  # an ErrorCode, or the exchange's own code when `source` is "exchange"
    source: Literal["worker", "exchange"] = "worker"
    message: str
    client_id: str | None = None
    attempts: list[Attempt] | None = None


class Resolution(BaseModel):
    """A human's decision on a job that needed review. Recording it never sends anything."""

    outcome: Literal["succeeded", "failed"]
    by: str
    at: float
    note: str
    withdrawal_id: int | str | None = None  # the withdrawal the exchange showed, for `succeeded`
    exchange_status: str | None = None  # its status at the exchange when the decision was recorded
    previous_state: JobState = JobState.NEEDS_REVIEW


class JobRecord(BaseModel):
    """One withdrawal job: its inputs, each step's record, and how it ended."""

    format: int = FORMAT
    job_id: str
    idempotency_key: str
    client_id: str
    batch_id: str | None = None
    # Who submitted it through the HTTP intake (the token's name, never its secret), and where to tell
    # them when it ends; both None for jobs submitted through the Python API or the CLI.
    submitted_by: str | None = None
    callback_url: str | None = None
    state: JobState = JobState.QUEUED
    current_step: str | None = None
    inputs: dict[str, Any]
    steps: dict[str, StepRecord] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: JobFailure | None = None
    resolution: Resolution | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def step(self, step_id: str) -> StepRecord:
        """The record of a step that has started."""
        return self.steps[step_id]

    def done_outputs(self) -> dict[str, dict[str, Any]]:
        """Outputs of the steps recorded as done, by step id."""
        return {sid: s.outputs for sid, s in self.steps.items() if s.state is StepState.DONE}

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobRecord:
        return cls.model_validate_json(raw)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and "format" not in data:
            return _from_format_0(data)
        return data


# Format 0 was written only for the balance-checked withdrawal workflow, whose one
# at-most-once step was `requestWithdrawal`: its attempts lived in `submission`.
_FORMAT_0_SUBMISSION_STEP = "requestWithdrawal"


def _from_format_0(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    submission = data.pop("submission", None) or {}
    steps = {sid: dict(step) for sid, step in (data.get("steps") or {}).items()}
    if submission.get("attempts") or submission.get("lookups"):
        step = steps.setdefault(_FORMAT_0_SUBMISSION_STEP, {"started_at": data.get("created_at", 0.0)})
        step.update(
            attempts=submission.get("attempts", []),
            lookups=submission.get("lookups", 0),
            failed_lookups=submission.get("failed_lookups", 0),
            found_by_lookup=submission.get("found_by_lookup", False),
        )
    error = data.get("error")
    if isinstance(error, dict) and error.get("code") not in ErrorCode.__members__:
        # Format 0 kept the exchange's code without saying whose it was.
        data["error"] = {**error, "source": "exchange"}
    data["steps"] = steps
    data["format"] = FORMAT
    return data
