"""Arazzo 1.0.1 runtime expressions: parsing, evaluation and resolution.

A runtime expression names a value produced while a workflow runs, for example
``$statusCode``, ``$inputs.symbol``, ``$response.body#/0/id`` or
``$steps.requestWithdrawal.outputs.withdrawalId``. This module is pure: it
reads a `Context` and never performs I/O.

Grammar (the spec's ABNF, with names made concrete so typos are caught)::

    $url | $method | $statusCode
    $request.<source> | $response.<source>
        source = header.<token> | query.<name> | path.<name> | body[#<json-pointer>]
    $inputs.<name>[#ptr] | $outputs.<name>[#ptr]
    $steps.<id>.outputs.<name>[#ptr]
    $workflows.<id>.(inputs|outputs).<name>[#ptr]
    $sourceDescriptions.<id>[.<name>]
    $components.(inputs|parameters|successActions|failureActions).<name>

    id    = [A-Za-z0-9_-]+                (the spec's pattern for stepId and names)
    name  = id *("." id)                  (output and component keys may hold dots)
    token = RFC 9110 tchar+               (header names)
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bpx_worker.errors import ExpressionError

__all__ = [
    "MISSING",
    "Context",
    "evaluate",
    "is_expression",
    "json_pointer",
    "resolve",
    "stringify",
    "validate",
]


class _Missing(enum.Enum):
    """Type of the `MISSING` sentinel. An enum member, so it stays a singleton across copy and pickle."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing.MISSING
"""The referenced value does not exist (unlike None, which is a JSON null that does)."""


@dataclass(frozen=True)
class Context:
    """Everything a runtime expression can read while one step runs."""

    inputs: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    status_code: int | None = None
    response_body: Any = MISSING
    response_headers: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    method: str | None = None

    def with_response(
        self,
        status_code: int | None,
        body: Any,
        headers: Mapping[str, str] | None,
        url: str | None = None,
        method: str | None = None,
    ) -> Context:
        """A copy with the current step's response (and request URL and method) set.

        All five fields are replaced: a `url`/`method` left out becomes None rather
        than keeping the previous step's request.
        """
        return replace(
            self,
            status_code=status_code,
            response_body=body,
            response_headers=dict(headers or {}),
            url=url,
            method=method,
        )


# --------------------------------------------------------------------------- JSON pointer

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")


def _pointer_tokens(pointer: str) -> list[str]:
    """Split and unescape an RFC 6901 pointer; ExpressionError when it is malformed."""
    if not isinstance(pointer, str):
        raise ExpressionError(f"invalid JSON pointer {pointer!r}: not a string")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ExpressionError(f"invalid JSON pointer {pointer!r}: must be empty or start with '/'")
    bad = _BAD_ESCAPE.search(pointer)
    if bad:
        raise ExpressionError(
            f"invalid JSON pointer {pointer!r}: '~' at position {bad.start()} must be followed by 0 or 1"
        )
    # ~1 before ~0, so "~01" decodes to "~1" and not to "/".
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def json_pointer(document: Any, pointer: str) -> Any:
    """Resolve an RFC 6901 JSON pointer against `document`.

    "" is the whole document. Array tokens must be decimal indices without leading
    zeros. Returns MISSING when the target does not exist (including "-", an index
    out of range, or a step into a scalar); raises ExpressionError when the pointer
    itself is malformed.
    """
    current = document
    for token in _pointer_tokens(pointer):
        current = _step_into(current, token)
        if current is MISSING:
            return MISSING
    return current


def _step_into(value: Any, token: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(token, MISSING)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        if not _ARRAY_INDEX.fullmatch(token):
            return MISSING
        index = int(token)
        return value[index] if index < len(value) else MISSING
    return MISSING


# --------------------------------------------------------------------------- parsing

_ID = r"[A-Za-z0-9_\-]+"
_NAME = rf"{_ID}(?:\.{_ID})*"
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_POINTER = r"(?:#(?P<pointer>.*))?"

_SOURCE = re.compile(r"\$(?P<source>[A-Za-z]*)(?P<tail>.*)\Z", re.DOTALL)
_MESSAGE_PART = re.compile(
    rf"\.(?:header\.(?P<header>{_TOKEN})|query\.(?P<query>{_NAME})|path\.(?P<path>{_NAME})"
    rf"|(?P<body>body){_POINTER})\Z",
    re.DOTALL,
)
_NAMED = re.compile(rf"\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL)
_STEP = re.compile(rf"\.(?P<id>{_ID})\.outputs\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL)
_WORKFLOW = re.compile(
    rf"\.(?P<id>{_ID})\.(?P<kind>inputs|outputs)\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL
)
_SOURCE_DESCRIPTION = re.compile(rf"\.(?P<id>{_ID})(?:\.(?P<name>{_NAME}))?\Z")
_COMPONENT = re.compile(
    rf"\.(?P<kind>inputs|parameters|successActions|failureActions)\.(?P<name>{_NAME})\Z"
)

# What each source must look like, for error messages.
_EXPECTED = {
    "request": "'$request.header.<name>', '$request.query.<name>', '$request.path.<name>' "
    "or '$request.body[#<json-pointer>]'",
    "response": "'$response.header.<name>', '$response.query.<name>', '$response.path.<name>' "
    "or '$response.body[#<json-pointer>]'",
    "inputs": "'$inputs.<name>[#<json-pointer>]'",
    "outputs": "'$outputs.<name>[#<json-pointer>]'",
    "steps": "'$steps.<stepId>.outputs.<name>[#<json-pointer>]'",
    "workflows": "'$workflows.<workflowId>.inputs.<name>' or '$workflows.<workflowId>.outputs.<name>'",
    "sourceDescriptions": "'$sourceDescriptions.<name>[.<field>]'",
    "components": "'$components.<inputs|parameters|successActions|failureActions>.<name>'",
}
_PATTERNS = {
    "request": _MESSAGE_PART,
    "response": _MESSAGE_PART,
    "inputs": _NAMED,
    "outputs": _NAMED,
    "steps": _STEP,
    "workflows": _WORKFLOW,
    "sourceDescriptions": _SOURCE_DESCRIPTION,
    "components": _COMPONENT,
}
_BARE = ("url", "method", "statusCode")
_KNOWN = ", ".join(f"${name}" for name in (*_BARE, *_PATTERNS))


@dataclass(frozen=True)
class _Reference:
    """A parsed runtime expression."""

    source: str
    parts: dict[str, str | None]
    pointer: str | None


def _parse(text: Any) -> _Reference:
    """Parse one whole runtime expression or raise ExpressionError saying what is wrong."""
    if not isinstance(text, str):
        raise ExpressionError(f"runtime expression must be a string, got {type(text).__name__}")

    def fail(reason: str) -> ExpressionError:
        return ExpressionError(f"invalid runtime expression {text!r}: {reason}")

    match = _SOURCE.match(text)
    if not match:
        raise fail("a runtime expression starts with '$'")
    source, tail = match["source"], match["tail"]
    if source in _BARE:
        if tail:
            raise fail(f"unexpected {tail!r} after '${source}'")
        return _Reference(source, {}, None)
    pattern = _PATTERNS.get(source)
    if pattern is None:
        raise fail(f"unknown source '${source}' (expected one of {_KNOWN})")
    parts = pattern.match(tail)
    if not parts:
        raise fail(f"expected {_EXPECTED[source]}")
    values = parts.groupdict()
    pointer = values.pop("pointer", None)
    if pointer is not None:
        try:
            _pointer_tokens(pointer)
        except ExpressionError as exc:
            raise fail(str(exc)) from None
    return _Reference(source, values, pointer)


def validate(expression: str) -> None:
    """Raise ExpressionError, with a message saying what is wrong, unless `expression` parses."""
    _parse(expression)


def is_expression(text: str) -> bool:
    """True when the whole of `text` is a runtime expression under the Arazzo grammar.

    A string that starts with '$' but does not parse is a literal, not an error
    (Redocly's rule for Respect issue #2798).
    """
    try:
        _parse(text)
    except ExpressionError:
        return False
    return True


# --------------------------------------------------------------------------- evaluation


def evaluate(expression: str, ctx: Context) -> Any:
    """Evaluate one whole runtime expression against `ctx`, keeping the value's type.

    Returns MISSING when the referenced value does not exist. Raises
    ExpressionError for a malformed expression, and for one this runtime does
    not support ($request.*, $workflows.*, $sourceDescriptions.*, $components.*).
    Containers are returned as copies, so callers may modify them freely.
    """
    ref = _parse(expression)
    value = _read_source(ref, ctx, expression)
    if ref.pointer is not None:
        value = json_pointer(value, ref.pointer)
    if isinstance(value, (dict, list)):
        value = copy.deepcopy(value)
    return value


def _read_source(ref: _Reference, ctx: Context, expression: str) -> Any:
    parts = ref.parts
    if ref.source == "statusCode":
        return MISSING if ctx.status_code is None else ctx.status_code
    if ref.source == "url":
        return MISSING if ctx.url is None else ctx.url
    if ref.source == "method":
        return MISSING if ctx.method is None else ctx.method
    if ref.source == "inputs":
        return ctx.inputs.get(parts["name"], MISSING)
    if ref.source == "outputs":
        return ctx.outputs.get(parts["name"], MISSING)
    if ref.source == "steps":
        return ctx.steps.get(parts["id"], {}).get(parts["name"], MISSING)
    if ref.source == "response":
        if parts["body"]:
            return ctx.response_body
        if parts["header"]:
            return _header(ctx.response_headers, parts["header"])
        raise _unsupported(expression, "a response has no query or path parameters")
    reasons = {
        "request": "the request as sent is not recorded",
        "workflows": "only a single workflow runs",
        "sourceDescriptions": "source descriptions are resolved when the document is loaded",
        "components": "components are resolved when the document is loaded",
    }
    raise _unsupported(expression, reasons[ref.source])


def _unsupported(expression: str, reason: str) -> ExpressionError:
    return ExpressionError(f"runtime expression {expression!r} is not supported by this runtime: {reason}")


def _header(headers: Mapping[str, str], name: str) -> Any:
    """A response header by name; HTTP header names are case-insensitive (RFC 9110)."""
    if name in headers:
        return headers[name]
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return MISSING


# --------------------------------------------------------------------------- resolution

# SPEC-1.1 forbids braces inside an embedded expression, so the first '}' closes it.
_EMBEDDED = re.compile(r"\{(\$[^{}]*)\}")


def stringify(value: Any) -> str:
    """The text form of a value embedded in a string (SPEC-1.1 interpolation rules).

    Strings as-is, None as "null", booleans as "true"/"false", numbers via str(),
    objects and arrays as compact JSON.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ExpressionError(f"cannot write value as JSON: {exc}") from exc
    return str(value)


def _interpolate(text: str, ctx: Context) -> str:
    def substitute(match: re.Match[str]) -> str:
        expression = match[1]
        if not is_expression(expression):
            return match[0]
        value = evaluate(expression, ctx)
        if value is MISSING:
            raise ExpressionError(
                f"embedded expression {match[0]!r} in {text!r} has no value"
            )
        return stringify(value)

    return _EMBEDDED.sub(substitute, text)


def resolve(value: Any, ctx: Context) -> Any:
    """Resolve the runtime expressions in a parameter value, payload or output definition.

    - a whole-string expression is evaluated, keeping its type (may be MISSING);
    - "{$...}" embedded in a string is replaced by the value's text (see `stringify`);
      an embedded expression with no value raises ExpressionError;
    - any other string, including "$not an expression", is returned unchanged;
    - dicts are resolved value by value, and keys whose value is MISSING are dropped
      (a missing optional input is left out rather than sent as null);
    - lists are resolved item by item, a MISSING item becoming None;
    - other values are returned unchanged.
    """
    if isinstance(value, str):
        if is_expression(value):
            return evaluate(value, ctx)
        if "{$" in value:
            return _interpolate(value, ctx)
        return value
    if isinstance(value, Mapping):
        resolved = {key: resolve(item, ctx) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not MISSING}
    if isinstance(value, list):
        return [None if item is MISSING else item for item in (resolve(i, ctx) for i in value)]
    return value
