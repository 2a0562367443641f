"""Arazzo 1.0.1 runtime expressions: compiled once, evaluated many times.

A runtime expression names a value produced while a workflow runs, for example
``$statusCode``, ``$inputs.symbol``, ``$response.body#/0/id`` or
``$steps.requestWithdrawal.outputs.withdrawalId``. `compile_expression` parses
one into an `Expression`; `compile_value` turns a parameter value, payload or
output definition into a `Value` tree. Both are done when the workflow is
loaded; evaluating them against a `Context` never parses text again. This
module is pure: it reads a `Context` and never performs I/O.

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

import abc
import copy
import enum
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from bpx_worker.errors import ExpressionError

__all__ = [
    "MISSING",
    "Context",
    "Expression",
    "Value",
    "compile_expression",
    "compile_value",
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


def _pointer_tokens(pointer: Any) -> list[str]:
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
    return _walk(document, _pointer_tokens(pointer))


def _walk(document: Any, tokens: Sequence[str]) -> Any:
    current = document
    for token in tokens:
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
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - the RFC 9110 token grammar, not a secret
_POINTER = r"(?:#(?P<pointer>.*))?"

_SOURCE = re.compile(r"\$(?P<source>[A-Za-z]*)(?P<tail>.*)\Z", re.DOTALL)
_MESSAGE_PART = re.compile(
    rf"\.(?:(?P<part>header)\.(?P<name>{_TOKEN})|(?P<query>query)\.(?P<qname>{_NAME})"
    rf"|(?P<path>path)\.(?P<pname>{_NAME})|(?P<body>body){_POINTER})\Z",
    re.DOTALL,
)
_NAMED = re.compile(rf"\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL)
_STEP = re.compile(rf"\.(?P<id>{_ID})\.outputs\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL)
_WORKFLOW = re.compile(
    rf"\.(?P<id>{_ID})\.(?P<part>inputs|outputs)\.(?P<name>{_NAME}){_POINTER}\Z", re.DOTALL
)
_SOURCE_DESCRIPTION = re.compile(rf"\.(?P<id>{_ID})(?:\.(?P<name>{_NAME}))?\Z")
_COMPONENT = re.compile(
    rf"\.(?P<part>inputs|parameters|successActions|failureActions)\.(?P<name>{_NAME})\Z"
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

# Sources the evaluator cannot read, and why; `Expression.unsupported` reports them.
_UNSUPPORTED: Final = {
    "request": "the request as sent is not recorded",
    "workflows": "only a single workflow runs",
    "sourceDescriptions": "source descriptions are resolved when the document is loaded",
    "components": "components are not supported",
}


@dataclass(frozen=True)
class Expression:
    """One parsed runtime expression. Evaluating it never parses text again.

    `source` is the part after '$' ("statusCode", "inputs", "steps", "response", ...).
    `part` narrows it: "header", "query", "path" or "body" for $request/$response,
    "inputs"/"outputs" for $workflows, the component kind for $components.
    `id` is the step, workflow or source description named; `name` the input,
    output, header or parameter name. `pointer` is the JSON pointer after '#'.
    """

    text: str
    source: str
    part: str | None = None
    id: str | None = None
    name: str | None = None
    pointer: str | None = None
    _tokens: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def unsupported(self) -> str | None:
        """Why this runtime cannot evaluate the expression, or None when it can."""
        if self.source in _UNSUPPORTED:
            return _UNSUPPORTED[self.source]
        if self.source == "response" and self.part in ("query", "path"):
            return "a response has no query or path parameters"
        return None

    def check_supported(self) -> None:
        """Raise ExpressionError, naming the expression and the reason, if it cannot be evaluated."""
        reason = self.unsupported
        if reason is not None:
            raise ExpressionError(f"runtime expression {self.text!r} is not supported by this runtime: {reason}")

    def evaluate(self, ctx: Context) -> Any:
        """The value named, keeping its type; MISSING when it does not exist.

        Containers are returned as copies, so callers may modify them freely.
        Raises ExpressionError for a source this runtime does not support.
        """
        value = self._read(ctx)
        if self._tokens is not None:
            value = _walk(value, self._tokens)
        if isinstance(value, (dict, list)):
            value = copy.deepcopy(value)
        return value

    def _read(self, ctx: Context) -> Any:
        source = self.source
        if source == "statusCode":
            return MISSING if ctx.status_code is None else ctx.status_code
        if source == "url":
            return MISSING if ctx.url is None else ctx.url
        if source == "method":
            return MISSING if ctx.method is None else ctx.method
        if source == "inputs":
            return ctx.inputs.get(self.name or "", MISSING)
        if source == "outputs":
            return ctx.outputs.get(self.name or "", MISSING)
        if source == "steps":
            return ctx.steps.get(self.id or "", {}).get(self.name or "", MISSING)
        if source == "response" and self.part == "body":
            return ctx.response_body
        if source == "response" and self.part == "header":
            return _header(ctx.response_headers, self.name or "")
        self.check_supported()
        raise AssertionError(f"unhandled runtime expression {self.text!r}")  # pragma: no cover


def compile_expression(text: Any) -> Expression:
    """Parse one whole runtime expression, or raise ExpressionError saying what is wrong.

    Parsing follows the grammar only: an expression this runtime cannot evaluate
    (see `Expression.unsupported`) still parses.
    """
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
        return Expression(text, source)
    pattern = _PATTERNS.get(source)
    if pattern is None:
        raise fail(f"unknown source '${source}' (expected one of {_KNOWN})")
    parts = pattern.match(tail)
    if not parts:
        raise fail(f"expected {_EXPECTED[source]}")
    groups = parts.groupdict()
    pointer = groups.get("pointer")
    tokens = None
    if pointer is not None:
        try:
            tokens = tuple(_pointer_tokens(pointer))
        except ExpressionError as exc:
            raise fail(str(exc)) from None
    kind = groups.get("part") or groups.get("query") or groups.get("path") or groups.get("body")
    name = groups.get("name") or groups.get("qname") or groups.get("pname")
    return Expression(text, source, kind, groups.get("id"), name, pointer, tokens)


def validate(expression: str) -> None:
    """Raise ExpressionError, with a message saying what is wrong, unless `expression` parses."""
    compile_expression(expression)


def is_expression(text: str) -> bool:
    """True when the whole of `text` is a runtime expression under the Arazzo grammar."""
    try:
        compile_expression(text)
    except ExpressionError:
        return False
    return True


def evaluate(expression: str, ctx: Context) -> Any:
    """Compile and evaluate one whole runtime expression (a convenience; see `Expression.evaluate`).

    Raises ExpressionError for a malformed expression, and for one this runtime
    does not support ($request.*, $workflows.*, $sourceDescriptions.*, $components.*).
    """
    return compile_expression(expression).evaluate(ctx)


def _header(headers: Mapping[str, str], name: str) -> Any:
    """A response header by name; HTTP header names are case-insensitive (RFC 9110)."""
    if name in headers:
        return headers[name]
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return MISSING


# --------------------------------------------------------------------------- values

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


class Value(abc.ABC):
    """A compiled parameter value, payload or output definition.

    `source` is the value as written in the document. `evaluate` resolves it
    against a context; `expressions` lists every runtime expression inside it
    with the path to it (for load-time checks and error messages).
    """

    source: Any

    @abc.abstractmethod
    def evaluate(self, ctx: Context) -> Any:
        """The value resolved against `ctx` (MISSING when a whole-string expression has none)."""

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        return iter(())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class _Literal(Value):
    """A value with no expression in it: a number, boolean, null or plain string."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def evaluate(self, ctx: Context) -> Any:
        return self.source


class _Whole(Value):
    """A string that is one runtime expression: evaluates to the value, keeping its type."""

    def __init__(self, expression: Expression) -> None:
        self.source = expression.text
        self.expression = expression

    def evaluate(self, ctx: Context) -> Any:
        return self.expression.evaluate(ctx)

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        yield "", self.expression


class _Template(Value):
    """A string with `{$...}` expressions embedded: always evaluates to a string."""

    def __init__(self, source: str, parts: tuple[str | Expression, ...]) -> None:
        self.source = source
        self.parts = parts

    def evaluate(self, ctx: Context) -> str:
        pieces = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = part.evaluate(ctx)
            if value is MISSING:
                raise ExpressionError(f"embedded expression '{{{part.text}}}' in {self.source!r} has no value")
            pieces.append(stringify(value))
        return "".join(pieces)

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        for part in self.parts:
            if isinstance(part, Expression):
                yield "", part


class _Object(Value):
    """An object whose values are compiled; a member whose value is MISSING is left out."""

    def __init__(self, source: Mapping[str, Any], items: tuple[tuple[str, Value], ...]) -> None:
        self.source = source
        self.items = items

    def evaluate(self, ctx: Context) -> dict[str, Any]:
        resolved = ((key, value.evaluate(ctx)) for key, value in self.items)
        return {key: value for key, value in resolved if value is not MISSING}

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        for key, value in self.items:
            for path, expression in value.expressions():
                yield f".{key}{path}", expression


class _Array(Value):
    """An array whose items are compiled; an item that is MISSING becomes null."""

    def __init__(self, source: Sequence[Any], items: tuple[Value, ...]) -> None:
        self.source = source
        self.items = items

    def evaluate(self, ctx: Context) -> list[Any]:
        return [None if value is MISSING else value for value in (item.evaluate(ctx) for item in self.items)]

    def expressions(self) -> Iterator[tuple[str, Expression]]:
        for index, item in enumerate(self.items):
            for path, expression in item.expressions():
                yield f"[{index}]{path}", expression


class _Invalid(Exception):
    """A bad string somewhere inside a value; `path` locates it (".symbol", "[0]")."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _expression_in(text: str, path: str, hint: str = "") -> Expression:
    try:
        expression = compile_expression(text)
    except ExpressionError as exc:
        raise _Invalid(path, f"{exc}{hint}") from None
    try:
        expression.check_supported()
    except ExpressionError as exc:
        raise _Invalid(path, str(exc)) from None
    return expression


def _compile_string(text: str, path: str) -> Value:
    if text.lstrip().startswith("$"):
        if text != text.strip():
            raise _Invalid(path, f"{text!r} has spaces around a runtime expression")
        # No escape exists for a literal '$...' (OAI/Arazzo-Specification#363), and
        # sending a mistyped expression as text would be worse than refusing it.
        return _Whole(_expression_in(text, path, " (a string that starts with '$' must be a runtime expression)"))
    if "{$" not in text:
        return _Literal(text)
    parts: list[str | Expression] = []
    end = 0
    for match in _EMBEDDED.finditer(text):
        parts.append(text[end : match.start()])
        parts.append(_expression_in(match[1], path, f" (embedded in {text!r})"))
        end = match.end()
    parts.append(text[end:])
    if any(isinstance(part, str) and "{$" in part for part in parts):
        raise _Invalid(path, f"{text!r} has a '{{$' that does not close with '}}'")
    return _Template(text, tuple(part for part in parts if part != ""))


def _compile(value: Any, path: str) -> Value:
    if isinstance(value, str):
        return _compile_string(value, path)
    if isinstance(value, Mapping):
        return _Object(value, tuple((str(key), _compile(item, f"{path}.{key}")) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return _Array(value, tuple(_compile(item, f"{path}[{index}]") for index, item in enumerate(value)))
    return _Literal(value)


def compile_value(value: Any, where: str = "value") -> Value:
    """Compile a parameter value, payload or output definition, parsing every expression in it.

    - a string that starts with '$' must be one runtime expression; it evaluates to
      the value, keeping its type (and may be MISSING);
    - "{$...}" embedded in a string is replaced by the value's text (see `stringify`);
      every embedded expression must parse, and one with no value raises at evaluation;
    - objects and arrays are compiled member by member; at evaluation an object
      leaves out a member whose value is MISSING (a missing optional input is not
      sent as null) and an array turns a MISSING item into null;
    - other strings, numbers, booleans and null are constants.

    Raises ExpressionError, naming `where` and the path inside the value, for an
    expression that does not parse or that this runtime does not support: nothing
    is ever sent as literal '$...' text.
    """
    try:
        return _compile(value, "")
    except _Invalid as exc:
        raise ExpressionError(f"{where}{exc.path}: {exc.reason}") from None


def resolve(value: Any, ctx: Context) -> Any:
    """Compile and evaluate a value in one go (a convenience; see `compile_value`)."""
    return compile_value(value).evaluate(ctx)
