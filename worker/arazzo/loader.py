"""Loading an Arazzo document: read it, check it, and compile one workflow of it.

Loading is where a document that cannot be run exactly as written is refused.
Every runtime expression and criterion is parsed here, and every reference is
checked: a `$steps.<id>.outputs.<name>` must name an earlier step and one of its
outputs, an `$inputs.<name>` one of the workflow's input properties. A part of
Arazzo 1.0.1 that this runtime does not implement (onSuccess `goto`/`end`,
failure `goto`/`end`, components and `reference`, `dependsOn`, `replacements`,
non-JSON bodies, jsonpath/xpath criteria, `operationPath`, steps that run a
workflow, more than one source description, ...) and any field Arazzo does not
define are load errors too, so nothing in the document is silently ignored.
Specification Extensions (`x-...`) carry no behaviour here and are skipped.

Every DocumentError names the document, the workflow and step (or the
workflow's outputs) and the field at fault, for example::

    seed.yml: workflow 'w', step 'reconcile': parameters[4].value: unknown step 'requestWithdrawl'

The only I/O is reading the Arazzo and OpenAPI YAML files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import jsonpatch
import yaml

from bpx_worker.arazzo.criteria import Criterion, compile_criterion
from bpx_worker.arazzo.expressions import Expression, Value, compile_value
from bpx_worker.arazzo.model import (
    Operation,
    Parameter,
    RequestBody,
    RetryAction,
    Step,
    Workflow,
)
from bpx_worker.config.documents import SEED_WORKFLOW, WORKER_ADDITIONS, load_yaml
from bpx_worker.errors import CriteriaError, DocumentError, ExpressionError

__all__ = ["load_workflow", "parse_workflow", "seed_workflow", "withdrawal_workflow"]

_INSTRUCTION = re.compile(r"\*\*Instruction:\*\*\s*`([A-Za-z]+)`")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_ID = re.compile(r"[A-Za-z0-9_\-]+\Z")  # the spec's pattern; `$steps.<id>` cannot name anything else
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9.\-_]+\Z")
_PATH_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_LOCATIONS = ("path", "query", "header")


# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    """Where in which document a check runs; builds the DocumentError naming it."""

    document: str
    scope: str

    def error(self, field: str, reason: str) -> DocumentError:
        return DocumentError(f"{self.document}: {self.scope}: {field}: {reason}")

    def fail(self, field: str, reason: str) -> NoReturn:
        raise self.error(field, reason)


def _present(value: Any) -> bool:
    return value is not None and value != [] and value != {}


def _fields(
    obj: Mapping[str, Any],
    site: _Site,
    prefix: str,
    allowed: Iterable[str],
    unsupported: Mapping[str, str] | None = None,
) -> None:
    """Refuse every field of `obj` that is neither allowed nor an `x-` extension.

    `unsupported` maps a part of Arazzo this runtime does not implement to the
    reason given when it is present; an empty one is harmless and passes.
    """
    allowed = frozenset(allowed)
    for key, value in obj.items():
        key = str(key)
        if key.startswith("x-") or key in allowed:
            continue
        if unsupported is not None and key in unsupported:
            if _present(value):
                site.fail(prefix + key, unsupported[key])
            continue
        site.fail(prefix + key, "is not a field of this Arazzo object (misspelt?)")


def _mapping(value: Any, site: _Site, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        site.fail(field, f"must be an object, got {type(value).__name__}")
    return cast(Mapping[str, Any], value)


def _list(value: Any, site: _Site, field: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        site.fail(field, f"must be a list, got {type(value).__name__}")
    return value


# --- what an expression may read ------------------------------------------------------------


@dataclass(frozen=True)
class _Readable:
    """What the expressions of one field may read when they are evaluated."""

    inputs: frozenset[str]
    steps: Mapping[str, frozenset[str]]  # steps that have run -> their output names
    all_steps: frozenset[str]
    response: str | None  # None when a response can be read; else why not

    def problem(self, expression: Expression) -> str | None:
        """Why `expression` cannot be evaluated here, or None when it can."""
        source = expression.source
        if source == "inputs":
            return self._input(expression.name or "")
        if source == "steps":
            step_id, name = expression.id or "", expression.name or ""
            if step_id not in self.steps:
                if step_id in self.all_steps:
                    return f"step {step_id!r} has not run yet when {expression.text!r} is evaluated"
                return f"unknown step {step_id!r} in {expression.text!r} (steps: {_names(self.all_steps)})"
            if name not in self.steps[step_id]:
                return (f"step {step_id!r} has no output {name!r} in {expression.text!r} "
                        f"(its outputs: {_names(self.steps[step_id])})")
            return None
        if source in ("statusCode", "response", "url", "method"):
            return None if self.response is None else f"{expression.text!r} cannot be read: {self.response}"
        if source == "outputs":
            return f"{expression.text!r} cannot be read: workflow outputs exist only once the workflow has ended"
        return expression.unsupported

    def _input(self, name: str) -> str | None:
        if name in self.inputs:
            return None
        hint = ""
        head = name.split(".", 1)[0]
        if head != name and head in self.inputs:
            hint = f"; to read inside input {head!r} use a JSON pointer: '$inputs.{head}#/...'"
        return f"unknown input {name!r} (the workflow's inputs: {_names(self.inputs)}){hint}"


def _names(names: Iterable[str]) -> str:
    listed = ", ".join(sorted(names))
    return listed or "none"


def _check_references(value: Value | Criterion, readable: _Readable, site: _Site, field: str) -> None:
    found: Iterable[tuple[str, Expression]]
    if isinstance(value, Criterion):
        found = (("", expression) for expression in value.expressions)
    else:
        found = value.expressions()
    for path, expression in found:
        reason = readable.problem(expression)
        if reason is not None:
            site.fail(field + path, reason)


def _value(raw: Any, site: _Site, field: str, readable: _Readable) -> Value:
    try:
        compiled = compile_value(raw, field)
    except ExpressionError as exc:
        raise DocumentError(f"{site.document}: {site.scope}: {exc}") from exc
    _check_references(compiled, readable, site, field)
    return compiled


def _criteria(raw: Any, site: _Site, field: str, readable: _Readable) -> tuple[Criterion, ...]:
    compiled = []
    for index, item in enumerate(_list(raw, site, field)):
        where = f"{field}[{index}]"
        try:
            criterion = compile_criterion(item)
        except CriteriaError as exc:
            raise site.error(where, str(exc)) from exc
        _check_references(criterion, readable, site, where)
        compiled.append(criterion)
    return tuple(compiled)


# --- the OpenAPI description ---------------------------------------------------------------


def _read(path: Path, site: _Site, field: str) -> Any:
    try:
        return load_yaml(path)
    except (OSError, yaml.YAMLError) as exc:
        site.fail(field, f"cannot read {path}: {exc}")


def _operations(openapi: Mapping[str, Any]) -> dict[str, Operation]:
    found: dict[str, Operation] = {}
    for path, item in (openapi.get("paths") or {}).items():
        if not isinstance(item, Mapping):
            continue
        for method in _HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, Mapping) or "operationId" not in op:
                continue
            match = _INSTRUCTION.search(str(op.get("description", "")))
            content = (op.get("requestBody") or {}).get("content") or {}
            found[str(op["operationId"])] = Operation(
                str(op["operationId"]), method.upper(), str(path), match.group(1) if match else None,
                next(iter(content), None),
            )
    return found


def _source(document: Mapping[str, Any], base_dir: Path, site: _Site) -> tuple[str, dict[str, Operation]]:
    """The one OpenAPI source description: its name and its operations by operationId."""
    sources = _list(document.get("sourceDescriptions"), site, "sourceDescriptions")
    if not sources:
        site.fail("sourceDescriptions", "at least one source description is required")
    if len(sources) > 1:
        names = _names(str(s.get("name")) for s in sources if isinstance(s, Mapping))
        site.fail("sourceDescriptions", f"{len(sources)} source descriptions ({names}); more than one "
                  "is not supported by this runtime, which calls the operations of one OpenAPI description")
    source = _mapping(sources[0], site, "sourceDescriptions[0]")
    _fields(source, site, "sourceDescriptions[0].", ("name", "url", "type"))
    name, url, kind = source.get("name"), source.get("url"), source.get("type", "openapi")
    if kind != "openapi":
        site.fail("sourceDescriptions[0].type", f"{kind!r} source descriptions are not supported by this runtime "
                  "(it runs the operations of one OpenAPI description)")
    if not isinstance(name, str) or not isinstance(url, str):
        site.fail("sourceDescriptions[0]", "needs a 'name' and a 'url'")
    if _SCHEME.match(url):
        site.fail("sourceDescriptions[0].url", f"{url!r} is a remote URL; this runtime reads a local file, "
                  "relative to the Arazzo document")
    path = (base_dir / url).resolve()
    if not path.is_file():
        site.fail("sourceDescriptions[0].url", f"source description {name!r} not found at {path}")
    openapi = _read(path, site, "sourceDescriptions[0].url")
    return name, _operations(_mapping(openapi, site, "sourceDescriptions[0].url"))


# --- steps ------------------------------------------------------------------------------------


def _operation(raw: Mapping[str, Any], source: str, operations: Mapping[str, Operation], site: _Site) -> Operation:
    op_id = raw.get("operationId")
    if not isinstance(op_id, str):
        site.fail("operationId", "is required (this runtime runs OpenAPI operations named by operationId)")
    name = op_id
    prefix = "$sourceDescriptions."
    if op_id.startswith(prefix):
        named, _, name = op_id[len(prefix):].partition(".")
        if named != source:
            site.fail("operationId", f"{op_id!r} names source description {named!r}; the document has {source!r}")
    if name not in operations:
        site.fail("operationId", f"{op_id!r} is not in the OpenAPI description")
    return operations[name]


def _parameters(
    raw_lists: Sequence[tuple[str, Any]], operation: Operation, site: _Site, readable: _Readable
) -> tuple[Parameter, ...]:
    """Workflow-level parameters, then the step's, which replace those with the same name and location."""
    merged: dict[tuple[str, str], Parameter] = {}
    for prefix, raw in raw_lists:
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(_list(raw, site, prefix)):
            field = f"{prefix}[{index}]"
            param = _mapping(item, site, field)
            if "reference" in param:
                site.fail(f"{field}.reference", "reusable parameters (a 'reference' to components) "
                          "are not supported by this runtime")
            _fields(param, site, field + ".", ("name", "in", "value"))
            name, location = param.get("name"), param.get("in")
            if not isinstance(name, str) or not name:
                site.fail(f"{field}.name", "is required")
            if location not in _LOCATIONS:
                reason = "is required" if location is None else f"{location!r} parameters are not supported"
                site.fail(f"{field}.in", f"{reason} by this runtime (path, query or header)")
            if "value" not in param:
                site.fail(f"{field}.value", "is required")
            # HTTP header names are case-insensitive (RFC 9110).
            key = (name.lower() if location == "header" else name, location)
            if key in seen:
                site.fail(field, f"a second {location} parameter {name!r}")
            seen.add(key)
            merged[key] = Parameter(
                name, cast(Literal["path", "query", "header"], location),
                _value(param["value"], site, f"{field}.value", readable),
            )
    parameters = tuple(merged.values())
    templated = set(_PATH_TEMPLATE.findall(operation.path))
    given = {p.name for p in parameters if p.location == "path"}
    if given - templated:
        site.fail("parameters", f"path parameter(s) {_names(given - templated)} not in {operation.path!r}")
    if templated - given:
        site.fail("parameters", f"{operation.path!r} needs path parameter(s) {_names(templated - given)}")
    return parameters


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _request_body(raw: Any, operation: Operation, site: _Site, readable: _Readable) -> RequestBody | None:
    if raw is None:
        return None
    body = _mapping(raw, site, "requestBody")
    _fields(body, site, "requestBody.", ("contentType", "payload"),
            {"replacements": "replacements are not supported by this runtime (write the payload as it is to be sent)"})
    content_type = body.get("contentType", operation.content_type)
    if content_type is not None and (not isinstance(content_type, str) or not _is_json(content_type)):
        field = "requestBody.contentType" if "contentType" in body else "requestBody"
        site.fail(field, f"{content_type!r} bodies are not supported by this runtime (only JSON)")
    if "payload" not in body:
        site.fail("requestBody.payload", "is required")
    payload = body["payload"]
    if not isinstance(payload, Mapping) and not (isinstance(payload, str) and payload.startswith("$")):
        site.fail("requestBody.payload", "must be a JSON object, or a runtime expression that yields one "
                  f"(got {type(payload).__name__})")
    return RequestBody(content_type, _value(payload, site, "requestBody.payload", readable))


def _no_success_actions(raw: Any, site: _Site, field: str) -> None:
    """onSuccess / successActions: the steps run in document order, so any action is refused."""
    for index, item in enumerate(_list(raw, site, field)):
        action = _mapping(item, site, f"{field}[{index}]")
        if "reference" in action:
            site.fail(f"{field}[{index}].reference", "reusable actions (a 'reference' to components) "
                      "are not supported by this runtime")
        kind = action.get("type")
        site.fail(f"{field}[{index}].type", f"{kind!r} success actions are not supported by this runtime "
                  "(steps run in document order, the workflow ends after the last one)")


def _retry_actions(raw: Any, site: _Site, field: str, readable: _Readable) -> tuple[RetryAction, ...]:
    actions = []
    for index, item in enumerate(_list(raw, site, field)):
        where = f"{field}[{index}]"
        action = _mapping(item, site, where)
        if "reference" in action:
            site.fail(f"{where}.reference", "reusable actions (a 'reference' to components) "
                      "are not supported by this runtime")
        kind = action.get("type")
        if kind in ("goto", "end"):
            site.fail(f"{where}.type", f"{kind!r} failure actions are not supported by this runtime "
                      "(a step that fails and is not retried fails the workflow)")
        if kind != "retry":
            site.fail(f"{where}.type", f"unknown failure action type {kind!r} (retry, goto or end)")
        _fields(action, site, where + ".", ("name", "type", "retryAfter", "retryLimit", "criteria"),
                {"stepId": "a retry that first runs another step is not supported by this runtime",
                 "workflowId": "a retry that first runs a workflow is not supported by this runtime"})
        retry_after = action.get("retryAfter", 0)
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or retry_after < 0:
            site.fail(f"{where}.retryAfter", f"must be a number of seconds >= 0, got {retry_after!r}")
        retry_limit = action.get("retryLimit", 1)  # the spec's default: a single retry
        if isinstance(retry_limit, bool) or not isinstance(retry_limit, int) or retry_limit < 0:
            site.fail(f"{where}.retryLimit", f"must be an integer >= 0, got {retry_limit!r}")
        actions.append(RetryAction(
            str(action.get("name", "retry")), float(retry_after), retry_limit,
            _criteria(action.get("criteria"), site, f"{where}.criteria", readable),
        ))
    return tuple(actions)


def _outputs(raw: Any, site: _Site, field: str, readable: _Readable) -> dict[str, Value]:
    outputs: dict[str, Value] = {}
    for name, definition in _mapping(raw or {}, site, field).items():
        where = f"{field}.{name}"
        if not isinstance(name, str) or not _OUTPUT_NAME.match(name):
            site.fail(where, "an output name must match [A-Za-z0-9.-_]+")
        if not isinstance(definition, str):
            site.fail(where, f"must be a runtime expression, got {type(definition).__name__}")
        value = _value(definition, site, where, readable)
        if next(value.expressions(), None) is None:
            site.fail(where, f"{definition!r} is not a runtime expression (did you mean '${definition}'?)")
        outputs[name] = value
    return outputs


@dataclass(frozen=True)
class _Shared:
    """What every step of one workflow shares while it is compiled."""

    document: str
    workflow_id: str
    source: str
    operations: Mapping[str, Operation]
    inputs: frozenset[str]
    all_steps: frozenset[str]
    parameters: Any  # workflow-level parameters, as written
    failure_actions: Any  # workflow-level failureActions, as written


_STEP_FIELDS = ("stepId", "description", "operationId", "parameters", "requestBody", "successCriteria",
                "onSuccess", "onFailure", "outputs")


def _step(raw: Mapping[str, Any], shared: _Shared, done: Mapping[str, frozenset[str]]) -> Step:
    step_id = str(raw["stepId"])
    site = _Site(shared.document, f"workflow {shared.workflow_id!r}, step {step_id!r}")
    _fields(raw, site, "", _STEP_FIELDS, {
        "operationPath": "operationPath is not supported by this runtime (name the operation by operationId)",
        "workflowId": "a step that runs a workflow is not supported by this runtime",
    })
    operation = _operation(raw, shared.source, shared.operations, site)
    before = _Readable(shared.inputs, done, shared.all_steps, "there is no response before the request is sent")
    after = _Readable(shared.inputs, done, shared.all_steps, None)
    parameters = _parameters(
        (("workflow parameters", shared.parameters), ("parameters", raw.get("parameters"))), operation, site, before
    )
    _no_success_actions(raw.get("onSuccess"), site, "onSuccess")
    # The step's failure actions replace the workflow's (as Respect and the Jentic runner read the spec).
    failure_field, failure_actions = (
        ("onFailure", raw["onFailure"]) if "onFailure" in raw else ("workflow failureActions", shared.failure_actions)
    )
    return Step(
        step_id=step_id,
        operation=operation,
        parameters=parameters,
        request_body=_request_body(raw.get("requestBody"), operation, site, before),
        success_criteria=_criteria(raw.get("successCriteria"), site, "successCriteria", after),
        outputs=_outputs(raw.get("outputs"), site, "outputs", after),
        retry_actions=_retry_actions(failure_actions, site, failure_field, after),
    )


# --- workflows ---------------------------------------------------------------------------------

_WORKFLOW_FIELDS = ("workflowId", "summary", "description", "inputs", "steps", "outputs", "parameters",
                    "successActions", "failureActions")


def _choose(document: Mapping[str, Any], workflow_id: str | None, site: _Site) -> Mapping[str, Any]:
    listed = _list(document.get("workflows"), site, "workflows")
    workflows = [_mapping(w, site, f"workflows[{i}]") for i, w in enumerate(listed)]
    ids = [str(w.get("workflowId")) for w in workflows]
    if not workflows:
        site.fail("workflows", "at least one workflow is required")
    if workflow_id is None:
        if len(workflows) > 1:
            site.fail("workflows", f"{len(workflows)} workflows ({', '.join(ids)}); this runtime runs one, "
                      "so choose it by workflowId")
        return workflows[0]
    for workflow in workflows:
        if workflow.get("workflowId") == workflow_id:
            return workflow
    site.fail("workflows", f"no workflow {workflow_id!r} (the document has {', '.join(ids)})")


def _inputs(raw: Any, site: _Site) -> tuple[Mapping[str, Any], frozenset[str]]:
    schema = _mapping(raw or {}, site, "inputs")
    if "$ref" in schema:
        site.fail("inputs.$ref", "a $ref in inputs (reusable inputs from components) is not supported by this runtime")
    properties = _mapping(schema.get("properties") or {}, site, "inputs.properties")
    return schema, frozenset(str(name) for name in properties)


def _workflow(raw: Mapping[str, Any], document: str, source: str, operations: Mapping[str, Operation]) -> Workflow:
    workflow_id = raw.get("workflowId")
    if not isinstance(workflow_id, str) or not workflow_id:
        _Site(document, "workflow").fail("workflowId", "is required")
    site = _Site(document, f"workflow {workflow_id!r}")
    _fields(raw, site, "", _WORKFLOW_FIELDS,
            {"dependsOn": "dependsOn (workflows that must run first) is not supported by this runtime"})
    _no_success_actions(raw.get("successActions"), site, "successActions")
    schema, inputs = _inputs(raw.get("inputs"), site)

    raw_steps = [_mapping(s, site, f"steps[{i}]") for i, s in enumerate(_list(raw.get("steps"), site, "steps"))]
    if not raw_steps:
        site.fail("steps", "the workflow has no steps")
    ids: list[str] = []
    for index, step_raw in enumerate(raw_steps):
        step_id = step_raw.get("stepId")
        if not isinstance(step_id, str) or not _ID.match(step_id):
            site.fail(f"steps[{index}].stepId", f"{step_id!r} must match [A-Za-z0-9_-]+ so that "
                      "runtime expressions and task names can refer to it")
        if step_id in ids:
            site.fail(f"steps[{index}].stepId", f"a second step {step_id!r}")
        ids.append(step_id)

    shared = _Shared(document, workflow_id, source, operations, inputs, frozenset(ids),
                     raw.get("parameters"), raw.get("failureActions"))
    steps: list[Step] = []
    done: dict[str, frozenset[str]] = {}
    for step_raw in raw_steps:
        step = _step(step_raw, shared, done.copy())
        steps.append(step)
        done[step.step_id] = frozenset(step.outputs)

    outputs_site = _Site(document, f"workflow {workflow_id!r}, outputs")
    ended = _Readable(inputs, done, frozenset(ids), "workflow outputs are computed after the last step, "
                      "with no response")
    outputs = _outputs(raw.get("outputs"), outputs_site, "outputs", ended)
    return Workflow(workflow_id, tuple(steps), outputs, schema, document)


def parse_workflow(
    document: Mapping[str, Any],
    base_dir: Path,
    workflow_id: str | None = None,
    *,
    name: str | None = None,
) -> Workflow:
    """Compile one workflow of an Arazzo document whose relative URLs resolve against `base_dir`.

    `workflow_id` chooses the workflow; it may be left out only when the document
    has one. `name` names the document in error messages. Raises DocumentError,
    naming the document, the step and the field, for anything that cannot be run
    exactly as written (see the module docstring).
    """
    site = _Site(name or f"Arazzo document in {base_dir}", "document")
    document = _mapping(document, site, "(root)")
    version = str(document.get("arazzo", ""))
    if not re.fullmatch(r"1\.0\.\d+", version):
        site.fail("arazzo", f"unsupported Arazzo version {document.get('arazzo')!r}; expected 1.0.x")
    _fields(document, site, "", ("arazzo", "info", "sourceDescriptions", "workflows"),
            {"components": "components (reusable inputs, parameters and actions) are not supported by this runtime"})
    source, operations = _source(document, base_dir, site)
    raw = _choose(document, workflow_id, site)
    return _workflow(raw, site.document, source, operations)


def load_workflow(path: Path, patch_path: Path | None = None, workflow_id: str | None = None) -> Workflow:
    """Load and compile an Arazzo file, optionally applying a JSON Patch (the worker's additions) first."""
    name = path.name if patch_path is None else f"{path.name} (with {patch_path.name})"
    site = _Site(name, "document")
    document = _read(path, site, "(file)")
    if patch_path is not None:
        patch = _read(patch_path, _Site(patch_path.name, "patch"), "(file)")
        try:
            document = jsonpatch.apply_patch(document, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise DocumentError(f"{patch_path.name} does not apply to {path.name}: {exc}") from exc
    return parse_workflow(document, path.parent, workflow_id, name=name)


@lru_cache(maxsize=1)
def withdrawal_workflow() -> Workflow:
    """The seed withdrawal workflow with the worker's additions: what the worker runs."""
    return load_workflow(SEED_WORKFLOW, WORKER_ADDITIONS)


@lru_cache(maxsize=1)
def seed_workflow() -> Workflow:
    """The seed workflow exactly as published."""
    return load_workflow(SEED_WORKFLOW)
