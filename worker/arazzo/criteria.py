"""Arazzo 1.0.1 Criterion objects: the "simple" condition language and regex criteria.

`compile_criterion` parses a Criterion object once, when the workflow is loaded,
into a `Criterion` whose `passes(ctx)` never parses text again. A simple
condition is tokenized and parsed by recursive descent into a tree of closures
holding compiled runtime expressions; nothing is ever passed to eval. A regex
criterion's pattern and context expression are compiled the same way. jsonpath
and xpath criteria are refused when compiled. Grammar, loosest first::

    condition  = or
    or         = and *( "||" and )
    and        = comparison *( "&&" comparison )
    comparison = unary [ ( "==" / "!=" / "<" / "<=" / ">" / ">=" ) unary ]
    unary      = "!" unary / postfix
    postfix    = primary *( "[" index "]" / "." name )
    primary    = number / string / "true" / "false" / "null" / runtime-expression / "(" or ")"

Semantics (SPEC l.622-710, with the SPEC-1.1 clarifications):

- string comparisons are case-insensitive;
- numbers compare numerically (as Decimal), and a numeric string compared with a
  number is read as a number; two numeric strings are ordered numerically too;
- null (and a MISSING value) equals only null, and is never ordered;
- values of different kinds are never equal and never ordered;
- null/MISSING where a boolean is needed counts as false (SPEC-1.1: "an expression
  that evaluates to null fails"), but `!` needs a real boolean, so that negating
  an absent field cannot turn it into a pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from bpx_worker.arazzo import expressions
from bpx_worker.arazzo.expressions import MISSING, Context, Expression
from bpx_worker.errors import CriteriaError, ExpressionError

__all__ = ["Criterion", "all_pass", "check", "compile_condition", "compile_criterion", "evaluate_condition", "failing"]


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # "op", "(", ")", "number", "string", "word", "expr", "index", "prop", "end"
    text: str
    position: int  # offset into the condition
    value: Any = None


_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_END = re.compile(r"[A-Za-z0-9_.]")
_NUMBER_RUN = re.compile(r"-?[A-Za-z0-9_.+-]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\[\s*(\d+)\s*\]")
_PROPERTY = re.compile(r"\.([A-Za-z0-9_\-]+)")
_EXPRESSION_RUN = re.compile(r"\$[^\s()!=<>&|]*")


class _Syntax(Exception):
    """A syntax error at one offset; turned into CriteriaError with the condition quoted."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def _tokenize(condition: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(condition):
        char = condition[pos]
        if char.isspace():
            pos += 1
            continue
        token = _next_token(condition, pos)
        tokens.append(token)
        pos = token.position + len(token.text)
    tokens.append(_Token("end", "", len(condition)))
    return tokens


def _next_token(text: str, pos: int) -> _Token:
    char = text[pos]
    if char in "()":
        return _Token(char, char, pos)
    for op in _OPERATORS:
        if text.startswith(op, pos):
            return _Token("op", op, pos)
    if char == "=":
        raise _Syntax("single '=' (use '==' to compare)", pos)
    if char in "&|":
        raise _Syntax(f"single '{char}' (use '{char * 2}')", pos)
    if char == "'":
        return _string(text, pos)
    if char == "$":
        return _expression(text, pos)
    if char == "[":
        match = _INDEX.match(text, pos)
        if not match:
            raise _Syntax("'[' must be followed by a non-negative integer index and ']'", pos)
        return _Token("index", match[0], pos, int(match[1]))
    if char == ".":
        match = _PROPERTY.match(text, pos)
        if not match:
            raise _Syntax("'.' must be followed by a property name", pos)
        return _Token("prop", match[0], pos, match[1])
    number = _NUMBER.match(text, pos)
    if number:
        end = number.end()
        if end < len(text) and _NUMBER_END.match(text, end):
            run = _NUMBER_RUN.match(text, pos)
            raise _Syntax(f"malformed number {run[0] if run else number[0]!r}", pos)
        return _Token("number", number[0], pos, Decimal(number[0]))
    word = _WORD.match(text, pos)
    if word:
        if word[0] not in ("true", "false", "null"):
            raise _Syntax(
                f"unknown word {word[0]!r} (strings go in single quotes, runtime expressions start with '$')",
                pos,
            )
        return _Token("word", word[0], pos, {"true": True, "false": False, "null": None}[word[0]])
    raise _Syntax(f"unexpected character {char!r}", pos)


def _string(text: str, start: int) -> _Token:
    """A single-quoted string; '' inside it is one quote."""
    pos = start + 1
    chars: list[str] = []
    while pos < len(text):
        if text[pos] == "'":
            if text.startswith("''", pos):
                chars.append("'")
                pos += 2
                continue
            return _Token("string", text[start : pos + 1], start, "".join(chars))
        chars.append(text[pos])
        pos += 1
    raise _Syntax("unterminated string", start)


def _expression(text: str, start: int) -> _Token:
    """A runtime expression: the '$' run, less any trailing [n] / .name accessors.

    The run stops at whitespace or one of ( ) ! = < > & |. A '#' pointer runs to
    the end of it; otherwise the longest prefix that is a runtime expression is
    taken, and what follows is tokenized as postfix accessors (so
    `$response.body.items[0]` reads the body, then `.items`, then `[0]`).
    """
    found = _EXPRESSION_RUN.match(text, start)
    run = found[0] if found else "$"
    if "#" not in run:
        cuts = [i for i, ch in enumerate(run) if ch in "[."] + [len(run)]
        for cut in sorted(cuts, reverse=True):
            try:
                expression = expressions.compile_expression(run[:cut])
            except ExpressionError:
                continue
            return _Token("expr", run[:cut], start, _supported(expression, start))
    try:
        expression = expressions.compile_expression(run)
    except ExpressionError as exc:
        raise _Syntax(str(exc), start) from exc
    return _Token("expr", run, start, _supported(expression, start))


def _supported(expression: Expression, position: int) -> Expression:
    try:
        expression.check_supported()
    except ExpressionError as exc:
        raise _Syntax(str(exc), position) from exc
    return expression


# --------------------------------------------------------------------------- tree

# A node is evaluated lazily so that && and || can short-circuit.
_Node = Callable[[Context], Any]


class _Parser:
    """Recursive-descent parser producing a tree of closures."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.expressions: list[Expression] = []

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_op(self, *ops: str) -> bool:
        return self.current.kind == "op" and self.current.text in ops

    def parse(self) -> _Node:
        node = self.parse_or()
        if self.current.kind != "end":
            raise _Syntax(f"unexpected {_describe(self.current)} after a complete condition", self.current.position)
        return node

    def parse_or(self) -> _Node:
        node = self.parse_and()
        while self.at_op("||"):
            operator = self.advance()
            node = _or(node, self.parse_and(), operator)
        return node

    def parse_and(self) -> _Node:
        node = self.parse_comparison()
        while self.at_op("&&"):
            operator = self.advance()
            node = _and(node, self.parse_comparison(), operator)
        return node

    def parse_comparison(self) -> _Node:
        node = self.parse_unary()
        if self.at_op(*_COMPARISONS):
            operator = self.advance()
            node = _comparison(node, self.parse_unary(), operator.text)
            # `1 < $x < 5` would silently compare a boolean with 5, so refuse chains.
            if self.at_op(*_COMPARISONS):
                raise _Syntax(
                    f"chained comparison '{self.current.text}' (group with parentheses and '&&')",
                    self.current.position,
                )
        return node

    def parse_unary(self) -> _Node:
        if self.at_op("!"):
            operator = self.advance()
            return _not(self.parse_unary(), operator)
        return self.parse_postfix()

    def parse_postfix(self) -> _Node:
        node = self.parse_primary()
        while self.current.kind in ("index", "prop"):
            node = _access(node, self.advance().value)
        return node

    def parse_primary(self) -> _Node:
        token = self.current
        if token.kind in ("number", "string", "word"):
            self.advance()
            return _constant(token.value)
        if token.kind == "expr":
            self.advance()
            self.expressions.append(token.value)
            return _runtime(token.value)
        if token.kind == "(":
            self.advance()
            node = self.parse_or()
            if self.current.kind != ")":
                raise _Syntax(
                    f"expected ')' to close '(' at position {token.position}, found {_describe(self.current)}",
                    self.current.position,
                )
            self.advance()
            return node
        previous = self.tokens[self.index - 1] if self.index else None
        after = f" after '{previous.text}'" if previous is not None else ""
        raise _Syntax(f"expected a value{after}, found {_describe(token)}", token.position)


def _describe(token: _Token) -> str:
    return "end of condition" if token.kind == "end" else repr(token.text)


# --------------------------------------------------------------------------- evaluation


class _Failure(Exception):
    """An evaluation error; turned into CriteriaError with the condition quoted."""


def _constant(value: Any) -> _Node:
    return lambda ctx: value


def _runtime(expression: Expression) -> _Node:
    def run(ctx: Context) -> Any:
        try:
            return expression.evaluate(ctx)
        except ExpressionError as exc:
            raise _Failure(str(exc)) from exc

    return run


def _access(node: _Node, key: int | str) -> _Node:
    def run(ctx: Context) -> Any:
        value = node(ctx)
        if isinstance(key, int):
            is_array = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
            return value[key] if is_array and key < len(value) else MISSING
        return value.get(key, MISSING) if isinstance(value, Mapping) else MISSING

    return run


def _truth(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None or value is MISSING:
        return False
    raise _Failure(f"{where} needs a boolean, got {_show(value)}")


def _not(node: _Node, operator: _Token) -> _Node:
    def run(ctx: Context) -> bool:
        value = node(ctx)
        if not isinstance(value, bool):
            raise _Failure(f"'!' at position {operator.position} needs a boolean, got {_show(value)}")
        return not value

    return run


def _and(left: _Node, right: _Node, operator: _Token) -> _Node:
    where = f"'&&' at position {operator.position}"
    return lambda ctx: _truth(left(ctx), where) and _truth(right(ctx), where)


def _or(left: _Node, right: _Node, operator: _Token) -> _Node:
    where = f"'||' at position {operator.position}"
    return lambda ctx: _truth(left(ctx), where) or _truth(right(ctx), where)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


# --------------------------------------------------------------------------- comparison

_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_NUMERIC_STRING = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")


def _comparison(left: _Node, right: _Node, operator: str) -> _Node:
    return lambda ctx: _compare(operator, left(ctx), right(ctx))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _as_decimal(value: float | Decimal | str) -> Decimal:
    # Through str() so 0.1 becomes Decimal("0.1"), and 200 == 200.0.
    return Decimal(str(value).strip())


def _compare(operator: str, left: Any, right: Any) -> bool:
    """Compare two values under the loose rules in the module docstring."""
    left = None if left is MISSING else left
    right = None if right is MISSING else right
    if left is None or right is None:
        if operator == "==":
            return left is None and right is None
        if operator == "!=":
            return not (left is None and right is None)
        return False

    pair = _comparable(left, right, ordering=operator not in ("==", "!="))
    if pair is None:  # different kinds: never equal, never ordered
        return operator == "!="
    a, b = pair
    try:
        return _APPLY[operator](a, b)
    except (TypeError, InvalidOperation):  # NaN, or containers under an ordering
        return operator == "!="


def _comparable(left: Any, right: Any, *, ordering: bool) -> tuple[Any, Any] | None:
    """Both sides turned into one comparable kind, or None when they cannot be compared."""
    if isinstance(left, bool) or isinstance(right, bool):
        return (left, right) if isinstance(left, bool) and isinstance(right, bool) else None
    if _is_number(left) and _is_number(right):
        return _as_decimal(left), _as_decimal(right)
    if _is_number(left) and isinstance(right, str):
        return (_as_decimal(left), _as_decimal(right)) if _NUMERIC_STRING.fullmatch(right) else None
    if isinstance(left, str) and _is_number(right):
        return (_as_decimal(left), _as_decimal(right)) if _NUMERIC_STRING.fullmatch(left) else None
    if isinstance(left, str) and isinstance(right, str):
        # Amounts arrive as strings ("10.5"); ordering them as text would put "10" before "9".
        if ordering and _NUMERIC_STRING.fullmatch(left) and _NUMERIC_STRING.fullmatch(right):
            return _as_decimal(left), _as_decimal(right)
        return left.casefold(), right.casefold()
    if isinstance(left, (dict, list)) and isinstance(right, (dict, list)):
        return left, right
    return None


_APPLY: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Criterion:
    """A compiled Criterion object. `passes` evaluates it without parsing anything again.

    `condition` and `kind` ("simple" or "regex") are as written in the document;
    `expressions` lists the runtime expressions it reads (for load-time checks).
    """

    condition: str
    kind: str
    expressions: tuple[Expression, ...]
    _test: Callable[[Context], bool] = field(repr=False, compare=False)

    def passes(self, ctx: Context) -> bool:
        """True when the criterion holds for `ctx`; raises CriteriaError when it cannot be judged."""
        return self._test(ctx)


def _parse_condition(condition: Any) -> tuple[_Node, tuple[Expression, ...]]:
    if not isinstance(condition, str):
        raise CriteriaError(f"condition must be a string, got {type(condition).__name__}")
    if not condition.strip():
        raise CriteriaError("condition is empty")
    try:
        parser = _Parser(_tokenize(condition))
        return parser.parse(), tuple(parser.expressions)
    except _Syntax as exc:
        raise CriteriaError(
            f"invalid condition {condition!r} at position {exc.position}: {exc.reason}"
        ) from exc.__cause__


def compile_condition(condition: str) -> Criterion:
    """Compile one Arazzo "simple" condition, such as `$statusCode == 200`.

    Raises CriteriaError, quoting the condition and the position (0-based offset)
    at fault, when it is malformed, including a malformed runtime expression
    inside it or one this runtime does not support.
    """
    tree, found = _parse_condition(condition)

    def test(ctx: Context) -> bool:
        try:
            return _truth(tree(ctx), "the condition")
        except _Failure as exc:
            raise CriteriaError(f"condition {condition!r}: {exc}") from exc.__cause__

    return Criterion(condition, "simple", found, test)


def evaluate_condition(condition: str, ctx: Context) -> bool:
    """Compile and evaluate one "simple" condition (a convenience; see `compile_condition`).

    A condition that yields null or an absent value fails (returns False); one
    that yields another non-boolean raises CriteriaError quoting the condition.
    """
    return compile_condition(condition).passes(ctx)


_FIELDS = frozenset({"condition", "context", "type"})


def _criterion_type(criterion: Mapping[str, Any], condition: str) -> str:
    kind = criterion.get("type", "simple")
    if isinstance(kind, Mapping):  # Criterion Expression Type Object {type, version}
        kind = kind.get("type")
    if kind not in ("simple", "regex", "jsonpath", "xpath"):
        raise CriteriaError(f"unknown criterion type {kind!r} (expected simple, regex, jsonpath or xpath)")
    if kind in ("jsonpath", "xpath"):
        raise CriteriaError(f"{kind} criteria are not supported by this runtime (condition {condition!r})")
    return str(kind)


def _compile_regex(criterion: Mapping[str, Any], condition: str) -> Criterion:
    context = criterion.get("context")
    if not isinstance(context, str) or not context.strip():
        raise CriteriaError(f"regex criterion {condition!r} needs a 'context' runtime expression")
    try:
        pattern = re.compile(condition)
    except re.error as exc:
        raise CriteriaError(f"regex criterion {condition!r} is not a valid regular expression: {exc}") from exc
    try:
        expression = expressions.compile_expression(context)
        expression.check_supported()
    except ExpressionError as exc:
        raise CriteriaError(f"regex criterion {condition!r}: context: {exc}") from exc

    def test(ctx: Context) -> bool:
        try:
            value = expression.evaluate(ctx)
            if value is MISSING or value is None:
                return False
            text = expressions.stringify(value)
        except ExpressionError as exc:
            raise CriteriaError(f"regex criterion {condition!r}: context: {exc}") from exc
        return pattern.search(text) is not None

    return Criterion(condition, "regex", (expression,), test)


def compile_criterion(criterion: Criterion | Mapping[str, Any]) -> Criterion:
    """Compile one Criterion object (a `Criterion` is returned as it is).

    `type` absent or "simple" compiles the condition language; "regex" compiles
    the `condition` pattern and the `context` expression (at evaluation the
    pattern is searched for in the context value as text, failing when the value
    is absent or null). Raises CriteriaError for a malformed criterion, a
    jsonpath or xpath criterion (not supported), a `context` on a simple
    criterion (it would be ignored) and a field the Criterion object does not have.
    """
    if isinstance(criterion, Criterion):
        return criterion
    if not isinstance(criterion, Mapping):
        raise CriteriaError(f"a criterion must be an object, got {type(criterion).__name__}")
    condition = criterion.get("condition")
    if not isinstance(condition, str) or not condition.strip():
        raise CriteriaError(f"criterion {dict(criterion)!r} has no condition")
    unknown = sorted(str(key) for key in criterion if key not in _FIELDS and not str(key).startswith("x-"))
    if unknown:
        raise CriteriaError(f"criterion {condition!r} has unknown field(s) {', '.join(unknown)}")
    kind = _criterion_type(criterion, condition)
    if kind == "regex":
        return _compile_regex(criterion, condition)
    if "context" in criterion:
        raise CriteriaError(
            f"criterion {condition!r}: 'context' is only used by regex criteria; a simple condition "
            "names its values with runtime expressions"
        )
    return compile_condition(condition)


def check(criterion: Criterion | Mapping[str, Any], ctx: Context) -> bool:
    """True when one criterion passes (a Mapping is compiled first; see `compile_criterion`)."""
    return compile_criterion(criterion).passes(ctx)


def all_pass(criteria: Iterable[Criterion | Mapping[str, Any]], ctx: Context) -> bool:
    """True when every criterion passes; an empty list passes."""
    return all(check(criterion, ctx) for criterion in criteria)


def failing(criteria: Iterable[Criterion | Mapping[str, Any]], ctx: Context) -> list[str]:
    """The conditions of the criteria that do not pass, in order (for error messages)."""
    compiled = [compile_criterion(criterion) for criterion in criteria]
    return [criterion.condition for criterion in compiled if not criterion.passes(ctx)]
