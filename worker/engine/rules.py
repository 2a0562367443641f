"""What a workflow's document cannot say, in a form the engine applies by operationId.

The engine attaches its own policies by what the document says (a non-idempotent
method is sent at most once; a step with a `retry` failure action is polled).
These rules add what only the business knows: a check on a step's outputs
before the job goes on, a check before a request that moves money is sent,
which statuses are settled, how to find a request whose answer was lost, and
what of a step's outputs the job record keeps (not a whole balance sheet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from bpx_worker.jobs.record import ErrorCode


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal, or the same number written differently ("1.5" and "1.50"): how a found item is matched."""
    if ours == theirs:
        return True
    try:
        return Decimal(str(ours)) == Decimal(str(theirs))
    except (InvalidOperation, ValueError):
        return False


@dataclass(frozen=True)
class Refusal:
    code: ErrorCode
    message: str


# (outputs of the step, or None before sending; the job's inputs) -> a refusal, or None to go on
Check = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], Refusal | None]
# (outputs of the step, the job's inputs) -> what of them the job record keeps
Keep = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


class Verdict(StrEnum):
    SETTLED = "settled"
    IN_PROGRESS = "in_progress"
    NEEDS_REVIEW = "needs_review"


@dataclass(frozen=True)
class Settlement:
    """A polled step's status output, and which of its values end the polling."""

    output: str
    settled: frozenset[str]
    in_progress: frozenset[str]

    def judge(self, outputs: Mapping[str, Any]) -> Verdict:
        status = outputs.get(self.output)
        if isinstance(status, str) and status in self.settled:
            return Verdict.SETTLED
        if isinstance(status, str) and status in self.in_progress:
            return Verdict.IN_PROGRESS
        return Verdict.NEEDS_REVIEW  # unknown statuses need a human, never a crash


@dataclass(frozen=True)
class Lookup:
    """How to find what a non-idempotent request created when its answer was lost.

    `key` is a field of the request body that the exchange keeps and can filter
    on (sent as a query parameter of `operation_id`); `fields` maps the request
    body's fields to the found item's, which must agree before the item is
    taken as this job's.
    """

    operation_id: str
    key: str
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Rules:
    after: Mapping[str, Check] = field(default_factory=dict)  # by operationId, on the step's outputs
    before_send: Mapping[str, Check] = field(default_factory=dict)  # by operationId, on the job's inputs
    settlement: Mapping[str, Settlement] = field(default_factory=dict)
    lookup: Mapping[str, Lookup] = field(default_factory=dict)
    keep: Mapping[str, Keep] = field(default_factory=dict)  # by operationId: outputs recorded, once checked
    # Reads whose answer is the same for every job (the account's balances), by operationId: identical
    # reads within a short freshness window may share one answer (`exchange/shared.py`).
    account_reads: frozenset[str] = frozenset()
    # Step outputs that identify what the job created, bound to its log lines once known: output -> log field.
    log_ids: Mapping[str, str] = field(default_factory=dict)
