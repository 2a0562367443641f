"""The compiled workflow: what loading an Arazzo document produces, and nothing else.

Every runtime expression and criterion in it is already parsed (see
`expressions.Value` and `criteria.Criterion`), so running a step never parses
text. All objects are immutable; `Workflow.with_retry_override` returns a new
workflow rather than changing one in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bpx_worker.arazzo.criteria import Criterion
from bpx_worker.arazzo.expressions import Value
from bpx_worker.errors import DocumentError

__all__ = [
    "HttpRequest",
    "Operation",
    "Parameter",
    "RequestBody",
    "RetryAction",
    "RetryOverride",
    "Step",
    "Workflow",
]


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI description says about one operationId: all the runtime keeps of it."""

    operation_id: str
    method: str
    path: str
    instruction: str | None
    content_type: str | None


@dataclass(frozen=True)
class Parameter:
    """A step parameter: where it goes and its compiled value."""

    name: str
    location: Literal["path", "query", "header"]
    value: Value


@dataclass(frozen=True)
class RequestBody:
    """A step's JSON request body: its content type and compiled payload."""

    content_type: str | None
    payload: Value


@dataclass(frozen=True)
class RetryOverride:
    """Values that replace a retry action's document values when the step runs.

    `source` says who set them (for example the settings they come from), so the
    loaded workflow shows why it does not run exactly as the document says.
    A field left None keeps the document's value.
    """

    source: str
    retry_after: float | None = None
    retry_limit: int | None = None


@dataclass(frozen=True)
class RetryAction:
    """An Arazzo `retry` failure action.

    `retry_after` (seconds) and `retry_limit` are the document's values: 0 and 1
    (the spec's default of a single retry) when the document leaves them out.
    `overridden_by` records an override applied with `Workflow.with_retry_override`;
    `effective_retry_after` and `effective_retry_limit` are what a run should use.
    """

    name: str
    retry_after: float
    retry_limit: int
    criteria: tuple[Criterion, ...]
    overridden_by: RetryOverride | None = None

    @property
    def effective_retry_after(self) -> float:
        """Seconds to wait before retrying: the override's value if any, else the document's."""
        override = self.overridden_by
        return override.retry_after if override and override.retry_after is not None else self.retry_after

    @property
    def effective_retry_limit(self) -> int:
        """How many retries are allowed: the override's value if any, else the document's."""
        override = self.overridden_by
        return override.retry_limit if override and override.retry_limit is not None else self.retry_limit


@dataclass(frozen=True)
class Step:
    """One compiled step: its operation, parameters, body, criteria, outputs and retry actions."""

    step_id: str
    operation: Operation
    parameters: tuple[Parameter, ...]
    request_body: RequestBody | None
    success_criteria: tuple[Criterion, ...]
    outputs: Mapping[str, Value]
    retry_actions: tuple[RetryAction, ...] = ()


@dataclass(frozen=True)
class Workflow:
    """One compiled workflow, its steps in document order.

    `document` names the file(s) it was loaded from, for messages.
    """

    workflow_id: str
    steps: tuple[Step, ...]
    outputs: Mapping[str, Value]
    inputs_schema: Mapping[str, Any]
    document: str = "<document>"

    def step(self, step_id: str) -> Step:
        """The step with this id; DocumentError when there is none."""
        for step in self.steps:
            if step.step_id == step_id:
                return step
        raise DocumentError(f"workflow {self.workflow_id!r} has no step {step_id!r}")

    def with_retry_override(
        self,
        step_id: str,
        *,
        source: str,
        retry_after: float | None = None,
        retry_limit: int | None = None,
        action: str | None = None,
    ) -> Workflow:
        """A copy whose step `step_id` retries with these values instead of the document's.

        This is the one documented way for settings to change how a step is
        retried: the document's values stay readable on each `RetryAction`, the
        override is recorded in its `overridden_by` (with `source`, e.g. the
        setting names), and `retry_overrides()` lists every override. `action`
        picks one retry action by name; by default every retry action of the step
        is overridden. Raises DocumentError for an unknown step or action, a step
        with no retry action, or a negative value.
        """
        if retry_after is None and retry_limit is None:
            raise DocumentError(f"retry override for step {step_id!r} sets neither retry_after nor retry_limit")
        if retry_after is not None and not retry_after >= 0:
            raise DocumentError(f"retry override for step {step_id!r}: retry_after must be >= 0, got {retry_after}")
        if retry_limit is not None and (isinstance(retry_limit, bool) or retry_limit < 0):
            raise DocumentError(f"retry override for step {step_id!r}: retry_limit must be >= 0, got {retry_limit}")
        target = self.step(step_id)
        chosen = [a for a in target.retry_actions if action is None or a.name == action]
        if not chosen:
            which = f"retry action {action!r}" if action is not None else "retry action"
            raise DocumentError(f"workflow {self.workflow_id!r}: step {step_id!r} has no {which} to override")
        override = RetryOverride(source, retry_after, retry_limit)
        actions = tuple(
            replace(a, overridden_by=override) if any(a is c for c in chosen) else a for a in target.retry_actions
        )
        steps = tuple(replace(s, retry_actions=actions) if s is target else s for s in self.steps)
        return replace(self, steps=steps)

    def retry_overrides(self) -> list[tuple[str, str, RetryOverride]]:
        """Every override in force, as (step id, retry action name, override)."""
        return [
            (step.step_id, action.name, action.overridden_by)
            for step in self.steps
            for action in step.retry_actions
            if action.overridden_by is not None
        ]


@dataclass(frozen=True)
class HttpRequest:
    """A step's request, ready to sign and send."""

    method: str
    path: str
    instruction: str | None
    query: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    content_type: str | None = None

    def signed_params(self) -> Mapping[str, Any]:
        """The parameters the exchange signs: the JSON body of a POST, else the query."""
        return self.body if self.body is not None else self.query
