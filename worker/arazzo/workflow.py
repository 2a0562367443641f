"""The Arazzo runtime: build each step's request and judge its response, from the compiled workflow.

Everything here is pure: a step's request is a function of the compiled step
and the evaluation context, and so are its success, outputs and retry action.
Nothing is parsed here; loading (`loader`) compiled every expression and
criterion. I/O lives in the exchange client and the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bpx_worker.arazzo.expressions import MISSING, Context
from bpx_worker.arazzo.model import HttpRequest, RetryAction, Step, Workflow
from bpx_worker.errors import ExpressionError

__all__ = [
    "build_request",
    "failed_conditions",
    "retry_action",
    "step_outputs",
    "succeeded",
    "workflow_outputs",
]


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_request(step: Step, ctx: Context) -> HttpRequest:
    """Evaluate the step's parameters and body into a request.

    A query or header parameter, or a top-level body member, whose value is
    missing or null is left out. A path parameter with no value raises
    ExpressionError (the path cannot be built), and so does a payload
    expression that does not yield a JSON object.
    """
    query: dict[str, Any] = {}
    headers: dict[str, str] = {}
    path = step.operation.path
    for param in step.parameters:
        value = param.value.evaluate(ctx)
        if param.location == "path":
            if value is MISSING or value is None:
                raise ExpressionError(f"step {step.step_id!r}: path parameter {param.name!r} has no value")
            path = path.replace("{" + param.name + "}", str(value))
        elif value is MISSING or value is None:
            continue
        elif param.location == "query":
            query[param.name] = value
        else:
            headers[param.name] = _header_text(value)
    body = None
    content_type = step.operation.content_type
    if step.request_body is not None:
        content_type = step.request_body.content_type
        payload = step.request_body.payload.evaluate(ctx)
        if not isinstance(payload, Mapping):
            raise ExpressionError(
                f"step {step.step_id!r}: requestBody.payload {step.request_body.payload.source!r} "
                f"must yield a JSON object, got {type(payload).__name__}"
            )
        body = {k: v for k, v in payload.items() if v is not None}
    return HttpRequest(step.operation.method, path, step.operation.instruction, query, headers, body, content_type)


def succeeded(step: Step, ctx: Context) -> bool:
    """Whether the response in `ctx` meets every success criterion of the step (none: it does)."""
    return all(criterion.passes(ctx) for criterion in step.success_criteria)


def failed_conditions(step: Step, ctx: Context) -> list[str]:
    """The conditions of the step's success criteria that the response in `ctx` does not meet."""
    return [criterion.condition for criterion in step.success_criteria if not criterion.passes(ctx)]


def retry_action(step: Step, ctx: Context) -> RetryAction | None:
    """The first `retry` failure action whose criteria all match the response, if any."""
    for action in step.retry_actions:
        if all(criterion.passes(ctx) for criterion in action.criteria):
            return action
    return None


def _plain(value: Any) -> Any:
    return None if value is MISSING else value


def step_outputs(step: Step, ctx: Context) -> dict[str, Any]:
    """The step's outputs evaluated against its response; an absent value is None."""
    return {name: _plain(value.evaluate(ctx)) for name, value in step.outputs.items()}


def workflow_outputs(workflow: Workflow, ctx: Context) -> dict[str, Any]:
    """The workflow's outputs evaluated against the steps' outputs; an absent value is None."""
    return {name: _plain(value.evaluate(ctx)) for name, value in workflow.outputs.items()}
