"""Unit tests for worker.expressions (Arazzo runtime expressions)."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal

import pytest

from bpx_worker.arazzo import MISSING, Context, compile_expression, compile_value
from bpx_worker.arazzo import expressions as expressions_module
from bpx_worker.arazzo.expressions import evaluate, is_expression, json_pointer, resolve, stringify, validate
from bpx_worker.errors import ExpressionError, WorkflowError

BODY = {
    "id": "wd-1",
    "status": "pending",
    "quantity": 12,
    "nested": {"a/b": 1, "m~n": 2, "~1": 3, "": 4, "list": [10, 20, {"deep": True}]},
    "nothing": None,
}

CTX = Context(
    inputs={
        "symbol": "USDC",
        "timestamp": 1700000000000,
        "window": 5000,
        "flag": False,
        "order": {"side": "Bid", "items": [1, 2]},
        "note": None,
        "quote": 'say "hi"',
    },
    steps={
        "getBalances": {"balances": {"USDC": {"available": "100.5"}}},
        "requestWithdrawal": {"withdrawalId": 4242, "status": "pending"},
    },
    outputs={"final": {"id": 7, "tags": ["a", "b"]}},
).with_response(
    200,
    BODY,
    {"Content-Type": "application/json", "X-Request-Id": "abc-123"},
    url="https://api.backpack.exchange/wapi/v1/capital/withdrawals",
    method="POST",
)


# --------------------------------------------------------------------------- MISSING and Context


def test_missing_sentinel_is_unique_and_survives_copy_and_pickle():
    assert repr(MISSING) == "MISSING"
    assert MISSING is not None
    assert copy.deepcopy(MISSING) is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING  # noqa: S301 - our own bytes


def test_with_response_returns_a_copy_with_response_fields():
    base = Context(inputs={"a": 1})
    after = base.with_response(201, [1], {"A": "b"}, url="http://x", method="GET")
    assert (after.status_code, after.response_body, after.url, after.method) == (201, [1], "http://x", "GET")
    assert after.response_headers == {"A": "b"}
    assert after.inputs == {"a": 1}
    assert base.status_code is None and base.response_body is MISSING


def test_default_context_has_no_response():
    ctx = Context()
    assert evaluate("$statusCode", ctx) is MISSING
    assert evaluate("$response.body", ctx) is MISSING
    assert evaluate("$response.body#/id", ctx) is MISSING
    assert evaluate("$response.header.Server", ctx) is MISSING
    assert evaluate("$url", ctx) is MISSING
    assert evaluate("$method", ctx) is MISSING


# --------------------------------------------------------------------------- JSON pointer


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", BODY),
        ("/id", "wd-1"),
        ("/quantity", 12),
        ("/nothing", None),
        ("/nested/a~1b", 1),  # ~1 is '/'
        ("/nested/m~0n", 2),  # ~0 is '~'
        ("/nested/~01", 3),  # decode ~1 before ~0: "~01" is "~1", not "/"
        ("/nested/", 4),  # the empty key
        ("/nested/list/0", 10),
        ("/nested/list/1", 20),
        ("/nested/list/2/deep", True),
    ],
)
def test_json_pointer_finds_values(pointer, expected):
    assert json_pointer(BODY, pointer) == expected


@pytest.mark.parametrize(
    "pointer",
    [
        "/absent",
        "/nested/list/3",  # out of range
        "/nested/list/-",  # the "append" token names nothing
        "/nested/list/01",  # leading zero
        "/nested/list/-1",
        "/nested/list/x",
        "/id/0",  # into a string
        "/quantity/a",  # into a number
        "/nothing/a",  # into null
        "/nested/a/b",  # "a/b" must be written a~1b
    ],
)
def test_json_pointer_missing_targets(pointer):
    assert json_pointer(BODY, pointer) is MISSING


def test_json_pointer_on_missing_document_is_missing():
    assert json_pointer(MISSING, "/a") is MISSING
    assert json_pointer(MISSING, "") is MISSING


def test_json_pointer_top_level_array():
    assert json_pointer([{"id": 1}, {"id": 2}], "/1/id") == 2


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("id", "must be empty or start with '/'"),
        ("#/id", "must be empty or start with '/'"),
        ("/a~2", "'~' at position 2 must be followed by 0 or 1"),
        ("/a~", "'~' at position 2 must be followed by 0 or 1"),
    ],
)
def test_json_pointer_malformed(pointer, message):
    with pytest.raises(ExpressionError) as err:
        json_pointer(BODY, pointer)
    assert message in str(err.value)
    assert repr(pointer) in str(err.value)


# --------------------------------------------------------------------------- is_expression


@pytest.mark.parametrize(
    "text",
    [
        "$url",
        "$method",
        "$statusCode",
        "$request.header.accept",
        "$request.query.symbol",
        "$request.path.id",
        "$request.body",
        "$request.body#/user/uuid",
        "$response.header.X-Request-Id",
        "$response.body",
        "$response.body#",
        "$response.body#/0/status",
        "$response.body#/a~1b/m~0n",
        "$inputs.symbol",
        "$inputs.order#/side",
        "$outputs.final",
        "$outputs.final#/id",
        "$steps.requestWithdrawal.outputs.withdrawalId",
        "$steps.getBalances.outputs.balances#/USDC/available",
        "$steps.a-b_c.outputs.x.y",
        "$workflows.foo.inputs.username",
        "$workflows.foo.outputs.bar#/name",
        "$sourceDescriptions.backpackApi.url",
        "$sourceDescriptions.backpackApi.get_balances",
        "$components.parameters.page",
        "$components.successActions.done",
    ],
)
def test_is_expression_accepts_the_grammar(text):
    assert is_expression(text) is True
    validate(text)  # does not raise


@pytest.mark.parametrize(
    "text",
    [
        "",
        "$",
        "statusCode",
        " $statusCode",
        "$statusCode ",
        "$statuscode",  # sources are case-sensitive
        "$foo",
        "$inputs",
        "$inputs.",
        "$inputs.a b",
        "$inputs..a",
        "$steps.x",
        "$steps.x.outputs",
        "$steps.x.inputs.y",
        "$response",
        "$response.bodyy",
        "$response.body#nope",
        "$response.body/0",
        "$response.header.",
        "$workflows.foo.steps.x",
        "$components.schemas.x",
        "$.store.book[0]",  # a JSONPath in a payload stays a literal (Respect #2798)
        "$[?count(@.pets) > 0]",
        "$100 fee",
        "{$inputs.symbol}",
    ],
)
def test_is_expression_rejects_everything_else(text):
    assert is_expression(text) is False


def test_is_expression_of_non_string_is_false():
    assert is_expression(42) is False
    assert is_expression(None) is False


# --------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("expression", "expected", "kind"),
    [
        ("$statusCode", 200, int),
        ("$inputs.timestamp", 1700000000000, int),
        ("$inputs.flag", False, bool),
        ("$inputs.note", None, type(None)),
        ("$inputs.symbol", "USDC", str),
        ("$inputs.order", {"side": "Bid", "items": [1, 2]}, dict),
        ("$inputs.order#/items", [1, 2], list),
        ("$inputs.order#/items/1", 2, int),
        ("$response.body", BODY, dict),
        ("$response.body#/quantity", 12, int),
        ("$response.body#/nested/list/2/deep", True, bool),
        ("$response.body#", BODY, dict),
        ("$url", "https://api.backpack.exchange/wapi/v1/capital/withdrawals", str),
        ("$method", "POST", str),
        ("$outputs.final", {"id": 7, "tags": ["a", "b"]}, dict),
        ("$outputs.final#/tags/1", "b", str),
        ("$steps.requestWithdrawal.outputs.withdrawalId", 4242, int),
        ("$steps.getBalances.outputs.balances", {"USDC": {"available": "100.5"}}, dict),
        ("$steps.getBalances.outputs.balances#/USDC/available", "100.5", str),
    ],
)
def test_evaluate_keeps_the_type(expression, expected, kind):
    value = evaluate(expression, CTX)
    assert value == expected
    assert type(value) is kind


@pytest.mark.parametrize(
    "name", ["Content-Type", "content-type", "CONTENT-TYPE", "cOnTeNt-TyPe"]
)
def test_response_header_is_case_insensitive(name):
    assert evaluate(f"$response.header.{name}", CTX) == "application/json"


def test_response_header_absent_is_missing():
    assert evaluate("$response.header.Retry-After", CTX) is MISSING


@pytest.mark.parametrize(
    "expression",
    [
        "$inputs.twoFactorToken",
        "$inputs.order#/absent",
        "$inputs.symbol#/0",
        "$outputs.absent",
        "$steps.notRunYet.outputs.withdrawalId",
        "$steps.requestWithdrawal.outputs.absent",
        "$steps.requestWithdrawal.outputs.withdrawalId#/x",
        "$response.body#/absent",
        "$response.body#/nested/list/9",
    ],
)
def test_evaluate_absent_values_are_missing(expression):
    assert evaluate(expression, CTX) is MISSING


def test_evaluate_returns_copies_of_containers():
    value = evaluate("$inputs.order", CTX)
    value["side"] = "Ask"
    value["items"].append(3)
    assert CTX.inputs["order"] == {"side": "Bid", "items": [1, 2]}


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("$steps.x", "invalid runtime expression '$steps.x': expected '$steps.<stepId>.outputs.<name>"),
        ("$steps.x.outputs", "expected '$steps.<stepId>.outputs.<name>"),
        ("$response.bodyy", "invalid runtime expression '$response.bodyy': expected '$response.header.<name>'"),
        ("$inputs.", "invalid runtime expression '$inputs.': expected '$inputs.<name>"),
        ("$foo", "invalid runtime expression '$foo': unknown source '$foo'"),
        ("$", "unknown source '$'"),
        ("$statusCode.x", "unexpected '.x' after '$statusCode'"),
        ("$response.body#nope", "invalid JSON pointer 'nope': must be empty or start with '/'"),
        ("$inputs.a#/b~3", "'~' at position 2 must be followed by 0 or 1"),
        ("statusCode", "a runtime expression starts with '$'"),
        ("", "a runtime expression starts with '$'"),
    ],
)
def test_evaluate_malformed_expression(expression, message):
    with pytest.raises(ExpressionError) as err:
        evaluate(expression, CTX)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("$statusCode", ("statusCode", None, None, None, None)),
        ("$inputs.order#/side", ("inputs", None, None, "order", "/side")),
        ("$steps.a-b.outputs.x.y", ("steps", None, "a-b", "x.y", None)),
        ("$response.header.X-Id", ("response", "header", None, "X-Id", None)),
        ("$response.body#/0/id", ("response", "body", None, None, "/0/id")),
        ("$request.query.symbol", ("request", "query", None, "symbol", None)),
        ("$workflows.w.outputs.o", ("workflows", "outputs", "w", "o", None)),
        ("$components.parameters.page", ("components", "parameters", None, "page", None)),
    ],
)
def test_compile_expression_names_its_parts(text, fields):
    expression = compile_expression(text)
    assert (expression.source, expression.part, expression.id, expression.name, expression.pointer) == fields
    assert expression.text == text


def test_compiled_expression_says_why_it_is_unsupported():
    assert compile_expression("$inputs.a").unsupported is None
    assert compile_expression("$response.query.a").unsupported == "a response has no query or path parameters"
    assert compile_expression("$components.parameters.p").unsupported == "components are not supported"


def test_validate_raises_the_same_message():
    with pytest.raises(ExpressionError, match=r"'\$steps\.x': expected"):
        validate("$steps.x")


def test_evaluate_non_string_raises():
    with pytest.raises(ExpressionError, match="must be a string, got int"):
        evaluate(5, CTX)


@pytest.mark.parametrize(
    "expression",
    [
        "$request.body",
        "$request.header.X-API-KEY",
        "$request.query.symbol",
        "$response.query.x",
        "$response.path.x",
        "$workflows.foo.outputs.bar",
        "$sourceDescriptions.backpackApi.url",
        "$components.parameters.page",
    ],
)
def test_evaluate_unsupported_sources(expression):
    with pytest.raises(ExpressionError) as err:
        evaluate(expression, CTX)
    assert f"runtime expression {expression!r} is not supported by this runtime" in str(err.value)


def test_expression_error_is_a_workflow_error():
    with pytest.raises(WorkflowError):
        evaluate("$nope", CTX)


# --------------------------------------------------------------------------- stringify


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (5, "5"),
        (1.5, "1.5"),
        (Decimal("0.10"), "0.10"),
        ({"a": 1, "b": [1, "x"]}, '{"a":1,"b":[1,"x"]}'),
        ([], "[]"),
        ({"é": "ü"}, '{"é":"ü"}'),
    ],
)
def test_stringify(value, text):
    assert stringify(value) == text


# --------------------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$inputs.timestamp", 1700000000000),
        ("$inputs.order", {"side": "Bid", "items": [1, 2]}),
        ("$statusCode", 200),
        ("Bearer {$inputs.symbol}", "Bearer USDC"),
        ("{$inputs.symbol}", "USDC"),
        ("{$statusCode}", "200"),  # embedding always yields a string
        ("{$inputs.symbol}-{$inputs.window}/{$inputs.flag}", "USDC-5000/false"),
        ("id={$steps.requestWithdrawal.outputs.withdrawalId}", "id=4242"),
        ("note={$inputs.note}", "note=null"),
        ("order={$inputs.order}", 'order={"side":"Bid","items":[1,2]}'),
        ("{$response.body#/nested/list}", '[10,20,{"deep":true}]'),
        ("{$inputs.quote}", 'say "hi"'),  # strings go in as-is
        ('{"symbol": "{$inputs.symbol}", "n": {$inputs.window}}', '{"symbol": "USDC", "n": 5000}'),
        ("{abc} and {$inputs.symbol}", "{abc} and USDC"),  # non-expressions in braces stay
        ("costs 100$", "costs 100$"),  # a '$' that does not start the string is text
        ("plain text", "plain text"),
        ("", ""),
        (42, 42),
        (1.5, 1.5),
        (True, True),
        (None, None),
    ],
)
def test_resolve_values(value, expected):
    resolved = resolve(value, CTX)
    assert resolved == expected
    assert type(resolved) is type(expected)


def test_resolve_whole_string_expression_can_be_missing():
    assert resolve("$inputs.twoFactorToken", CTX) is MISSING


def test_resolve_payload_drops_missing_optional_input():
    payload = {
        "symbol": "$inputs.symbol",
        "blockchain": "Solana",
        "quantity": "$inputs.timestamp",
        "twoFactorToken": "$inputs.twoFactorToken",
        "note": "$inputs.note",
    }
    assert resolve(payload, CTX) == {
        "symbol": "USDC",
        "blockchain": "Solana",
        "quantity": 1700000000000,
        "note": None,  # an explicit null input is a value and is kept
    }


def test_resolve_nested_structures():
    value = {
        "outer": {"id": "$steps.requestWithdrawal.outputs.withdrawalId", "gone": "$outputs.absent"},
        "list": ["$inputs.symbol", "$inputs.absent", 3, {"x": "$inputs.flag"}],
    }
    assert resolve(value, CTX) == {
        "outer": {"id": 4242},
        "list": ["USDC", None, 3, {"x": False}],
    }


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("$not an expression", "payload: invalid runtime expression '$not an expression'"),
        ("$.store.book[0]", "a string that starts with '$' must be a runtime expression"),  # Respect #2798
        ("$100", "invalid runtime expression '$100': unknown source '$'"),
        ("$steps.x.y", "payload: invalid runtime expression '$steps.x.y'"),
        (" $inputs.symbol", "has spaces around a runtime expression"),
        ("{$not an expression}", "embedded in '{$not an expression}'"),
        ("id={$inputs.}", "invalid runtime expression '$inputs.'"),
        ("id={$inputs.symbol", "has a '{$' that does not close with '}'"),
        ({"a": {"b": ["ok", "$nope"]}}, "payload.a.b[1]: invalid runtime expression '$nope'"),
        ({"body": "$request.body"}, "payload.body: runtime expression '$request.body' is not supported"),
        ("x={$components.parameters.page}", "is not supported by this runtime: components are not supported"),
    ],
)
def test_compile_value_refuses_a_dollar_string_that_is_not_an_expression(value, fragment):
    with pytest.raises(ExpressionError) as err:
        compile_value(value, "payload")
    assert fragment in str(err.value)


def test_compiled_value_lists_its_expressions_with_their_paths():
    value = compile_value({"a": "$inputs.symbol", "b": ["x", "n={$inputs.window}"], "c": 1})
    assert [(path, expression.text) for path, expression in value.expressions()] == [
        (".a", "$inputs.symbol"),
        (".b[1]", "$inputs.window"),
    ]


def test_compiled_value_evaluates_without_parsing_again(monkeypatch):
    value = compile_value({"symbol": "$inputs.symbol", "note": "n={$inputs.window}", "list": ["$statusCode"]})
    monkeypatch.setattr(expressions_module, "compile_expression", _refuse)
    assert value.evaluate(CTX) == {"symbol": "USDC", "note": "n=5000", "list": [200]}


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("parsed at evaluation")


def test_resolve_does_not_modify_its_input():
    payload = {"a": "$inputs.symbol", "b": ["$inputs.absent"]}
    before = copy.deepcopy(payload)
    resolve(payload, CTX)
    assert payload == before


def test_resolve_embedded_missing_raises_naming_it():
    with pytest.raises(ExpressionError) as err:
        resolve("code={$inputs.twoFactorToken}", CTX)
    assert "'{$inputs.twoFactorToken}'" in str(err.value)
    assert "'code={$inputs.twoFactorToken}'" in str(err.value)
    assert "has no value" in str(err.value)


def test_resolve_whole_string_unsupported_raises():
    with pytest.raises(ExpressionError, match="not supported"):
        resolve("$request.body", CTX)


def test_resolve_seed_workflow_outputs():
    ctx = Context(
        steps={
            "requestWithdrawal": {"withdrawalId": 991, "status": "pending"},
            "reconcileWithdrawal": {"reconciledStatus": "confirmed", "reconciledId": 991},
        }
    )
    outputs = {
        "withdrawalId": "$steps.requestWithdrawal.outputs.withdrawalId",
        "status": "$steps.reconcileWithdrawal.outputs.reconciledStatus",
    }
    assert resolve(outputs, ctx) == {"withdrawalId": 991, "status": "confirmed"}


def test_resolve_step_outputs_from_a_response():
    ctx = Context().with_response(200, [{"id": 991, "status": "confirmed"}], {})
    outputs = {"reconciledStatus": "$response.body#/0/status", "reconciledId": "$response.body#/0/id"}
    assert resolve(outputs, ctx) == {"reconciledStatus": "confirmed", "reconciledId": 991}
