"""The Arazzo runtime: load a workflow, build each step's request, judge its response.

Everything here is pure once the documents are loaded: a step's request is a
function of the step and the evaluation context, and so are its success,
outputs and next action. I/O lives in `worker.client` (HTTP) and the callers
(`worker.runner` in process, `tasks.withdrawal` on Celery).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonpatch

from bpx_worker.config.documents import SEED_WORKFLOW, WORKER_ADDITIONS, load_yaml
from bpx_worker.arazzo import criteria
from bpx_worker.errors import DocumentError
from bpx_worker.arazzo.expressions import MISSING, Context, resolve

_INSTRUCTION = re.compile(r"\*\*Instruction:\*\*\s*`([A-Za-z]+)`")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI description says about one operationId: all the runtime keeps of it."""

    operation_id: str
    method: str
    path: str
    instruction: str | None
    content_type: str | None


@dataclass(frozen=True)
class RetryAction:
    """An Arazzo `retry` failure action."""

    name: str
    retry_after: float
    retry_limit: int
    criteria: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Step:
    step_id: str
    operation: Operation
    parameters: tuple[Mapping[str, Any], ...]
    request_body: Mapping[str, Any] | None
    success_criteria: tuple[Mapping[str, Any], ...]
    outputs: Mapping[str, str]
    retry_actions: tuple[RetryAction, ...] = ()


@dataclass(frozen=True)
class Workflow:
    workflow_id: str
    steps: tuple[Step, ...]
    outputs: Mapping[str, str]
    inputs_schema: Mapping[str, Any]

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.step_id == step_id:
                return step
        raise DocumentError(f"workflow {self.workflow_id!r} has no step {step_id!r}")


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


# --- loading -------------------------------------------------------------------------------


def _operations(openapi: Mapping[str, Any]) -> dict[str, Operation]:
    found: dict[str, Operation] = {}
    for path, item in openapi.get("paths", {}).items():
        for method in _HTTP_METHODS:
            op = item.get(method)
            if not op or "operationId" not in op:
                continue
            match = _INSTRUCTION.search(op.get("description", ""))
            content = (op.get("requestBody") or {}).get("content") or {}
            found[op["operationId"]] = Operation(
                op["operationId"], method.upper(), path, match.group(1) if match else None, next(iter(content), None)
            )
    return found


def _retry_actions(step: Mapping[str, Any]) -> tuple[RetryAction, ...]:
    actions = []
    for action in step.get("onFailure") or ():
        if action.get("type") != "retry":
            raise DocumentError(f"step {step['stepId']!r}: only 'retry' failure actions are supported")
        actions.append(
            RetryAction(
                action.get("name", "retry"),
                float(action.get("retryAfter", 0)),
                int(action.get("retryLimit", 1)),  # the spec's default: one retry
                tuple(action.get("criteria") or ()),
            )
        )
    return tuple(actions)


def parse_workflow(document: Mapping[str, Any], base_dir: Path, workflow_id: str | None = None) -> Workflow:
    """Build a Workflow from an Arazzo document whose relative URLs resolve against `base_dir`."""
    if not str(document.get("arazzo", "")).startswith("1.0"):
        raise DocumentError(f"unsupported Arazzo version {document.get('arazzo')!r}; expected 1.0.x")
    sources = [s for s in document.get("sourceDescriptions", ()) if s.get("type", "openapi") == "openapi"]
    if len(sources) != 1:
        raise DocumentError("expected exactly one OpenAPI source description")
    openapi_path = (base_dir / sources[0]["url"]).resolve()
    if not openapi_path.is_file():
        raise DocumentError(f"source description {sources[0]['name']!r} not found at {openapi_path}")
    operations = _operations(load_yaml(openapi_path))

    workflows = document.get("workflows") or []
    chosen = [w for w in workflows if workflow_id in (None, w.get("workflowId"))]
    if not chosen:
        raise DocumentError(f"no workflow {workflow_id!r} in the document")
    raw = chosen[0]
    steps = []
    for step in raw.get("steps") or ():
        op_id = step.get("operationId")
        if op_id not in operations:
            raise DocumentError(f"step {step.get('stepId')!r}: operationId {op_id!r} is not in the OpenAPI description")
        steps.append(
            Step(
                step_id=step["stepId"],
                operation=operations[op_id],
                parameters=tuple(step.get("parameters") or ()),
                request_body=step.get("requestBody"),
                success_criteria=tuple(step.get("successCriteria") or ()),
                outputs=dict(step.get("outputs") or {}),
                retry_actions=_retry_actions(step),
            )
        )
    if not steps:
        raise DocumentError(f"workflow {raw.get('workflowId')!r} has no steps")
    return Workflow(raw["workflowId"], tuple(steps), dict(raw.get("outputs") or {}), raw.get("inputs") or {})


def load_workflow(path: Path, patch_path: Path | None = None, workflow_id: str | None = None) -> Workflow:
    """Load an Arazzo file, optionally applying a JSON Patch (the worker's additions) first."""
    document = load_yaml(path)
    if patch_path is not None:
        try:
            document = jsonpatch.apply_patch(document, load_yaml(patch_path))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise DocumentError(f"{patch_path.name} does not apply to {path.name}: {exc}") from exc
    return parse_workflow(document, path.parent, workflow_id)


@lru_cache(maxsize=1)
def withdrawal_workflow() -> Workflow:
    """The seed withdrawal workflow with the worker's additions: what the worker runs."""
    return load_workflow(SEED_WORKFLOW, WORKER_ADDITIONS)


@lru_cache(maxsize=1)
def seed_workflow() -> Workflow:
    """The seed workflow exactly as published."""
    return load_workflow(SEED_WORKFLOW)


# --- evaluation ------------------------------------------------------------------------------


def _header_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_request(step: Step, ctx: Context) -> HttpRequest:
    """Evaluate the step's parameters and body into a request. Missing optional values are left out."""
    query: dict[str, Any] = {}
    headers: dict[str, str] = {}
    path = step.operation.path
    for param in step.parameters:
        value = resolve(param.get("value"), ctx)
        if value is MISSING or value is None:
            continue
        where = param.get("in")
        if where == "query":
            query[param["name"]] = value
        elif where == "header":
            headers[param["name"]] = _header_text(value)
        elif where == "path":
            path = path.replace("{" + param["name"] + "}", str(value))
        else:
            raise DocumentError(f"step {step.step_id!r}: parameter location {where!r} is not supported")
    body = None
    content_type = step.operation.content_type
    if step.request_body is not None:
        content_type = step.request_body.get("contentType", content_type)
        body = resolve(step.request_body.get("payload"), ctx)
        if not isinstance(body, Mapping):
            raise DocumentError(f"step {step.step_id!r}: only JSON object payloads are supported")
        body = {k: v for k, v in body.items() if v is not None}
    return HttpRequest(step.operation.method, path, step.operation.instruction, query, headers, body, content_type)


def succeeded(step: Step, ctx: Context) -> bool:
    """Whether the response in `ctx` meets every success criterion of the step."""
    return criteria.all_pass(step.success_criteria, ctx)


def failed_conditions(step: Step, ctx: Context) -> list[str]:
    return criteria.failing(step.success_criteria, ctx)


def retry_action(step: Step, ctx: Context) -> RetryAction | None:
    """The first `retry` failure action whose criteria match the response, if any."""
    for action in step.retry_actions:
        if criteria.all_pass(action.criteria, ctx):
            return action
    return None


def _plain(value: Any) -> Any:
    return None if value is MISSING else value


def step_outputs(step: Step, ctx: Context) -> dict[str, Any]:
    return {name: _plain(resolve(expr, ctx)) for name, expr in step.outputs.items()}


def workflow_outputs(workflow: Workflow, ctx: Context) -> dict[str, Any]:
    return {name: _plain(resolve(expr, ctx)) for name, expr in workflow.outputs.items()}
