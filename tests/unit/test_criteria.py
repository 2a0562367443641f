"""Unit tests for worker.criteria (Arazzo Criterion objects)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bpx_worker.arazzo import Context, compile_criterion
from bpx_worker.arazzo import criteria as criteria_module
from bpx_worker.arazzo import expressions as expressions_module
from bpx_worker.arazzo.criteria import all_pass, check, compile_condition, evaluate_condition, failing
from bpx_worker.errors import CriteriaError, ExpressionError, WorkflowError

WORKFLOW = (
    Path(__file__).resolve().parents[2]
    / "config/workflows/arazzo/backpack-balance-checked-withdrawal-workflow.yml"
)

CTX = Context(
    inputs={
        "symbol": "USDC",
        "quantity": "10.5",
        "window": 5000,
        "ratio": 0.1,
        "enabled": True,
        "name": "O'Brien",
        "empty": "",
        "nothing": None,
        "list": [1, 2, 3],
    },
    steps={
        "requestWithdrawal": {"withdrawalId": 4242, "status": "Pending"},
        "getBalances": {"balances": {"USDC": {"available": "100.25", "locked": "0"}}},
    },
).with_response(
    200,
    [{"id": 4242, "status": "Confirmed", "quantity": "10.5", "fee": None, "ok": True}],
    {"Content-Type": "application/json", "Retry-After": "3"},
)


def cond(text: str, ctx: Context = CTX) -> bool:
    return evaluate_condition(text, ctx)


# --------------------------------------------------------------------------- literals and operators


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # each comparison operator on numbers
        ("1 == 1", True),
        ("1 == 2", False),
        ("1 != 2", True),
        ("1 != 1", False),
        ("1 < 2", True),
        ("2 < 1", False),
        ("2 <= 2", True),
        ("3 <= 2", False),
        ("3 > 2", True),
        ("2 > 3", False),
        ("2 >= 2", True),
        ("1 >= 2", False),
        # number literal forms
        ("-1 < 0", True),
        ("-1.5 == -1.50", True),
        ("1e3 == 1000", True),
        ("2.5E-1 == 0.25", True),
        ("0.3 == 0.30", True),
        # booleans and logic
        ("true", True),
        ("false", False),
        ("true == true", True),
        ("true != false", True),
        ("!false", True),
        ("!true", False),
        ("!!true", True),
        ("true && true", True),
        ("true && false", False),
        ("false || true", True),
        ("false || false", False),
        # strings
        ("'abc' == 'abc'", True),
        ("'abc' != 'abd'", True),
        ("'a' < 'b'", True),
        ("'B' > 'a'", True),  # case-insensitive ordering too
        ("'' == ''", True),
        ("'it''s' == 'IT''S'", True),  # '' is an escaped quote
        ("'a b  c' == 'A B  C'", True),  # whitespace inside strings is kept
        ("'a b' == 'ab'", False),
        ("'x==y' == 'X==Y'", True),  # operators inside strings are text
    ],
)
def test_literals_and_operators(condition, expected):
    assert cond(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # ! binds tighter than comparisons: (!true) == 'x' is false == 'x' (false),
        # where !(true == 'x') would be true
        ("!$inputs.enabled == 'x'", False),
        ("!true == false", True),
        # comparisons bind tighter than &&, && tighter than ||
        ("1 == 1 && 2 == 2", True),
        ("true || false && false", True),  # true || (false && false)
        ("(true || false) && false", False),
        ("false && false || true", True),  # (false && false) || true
        ("false && (false || true)", False),
        ("!(1 == 2)", True),
        ("!(true && false) && !(false || false)", True),
        ("((($statusCode == 200)))", True),
        ("($statusCode == 200 || $statusCode == 201) && $response.body#/0/ok == true", True),
        ("$statusCode==200&&$inputs.window>=5000", True),  # no spaces needed
    ],
)
def test_precedence_and_parentheses(condition, expected):
    assert cond(condition) is expected


def test_short_circuit_skips_the_right_operand():
    # The right side would raise (a non-boolean under '!'), so it must not be evaluated.
    assert cond("true || !$statusCode") is True
    assert cond("false && !$statusCode") is False
    with pytest.raises(CriteriaError):
        cond("false || !$statusCode")


# --------------------------------------------------------------------------- comparison semantics


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("'Confirmed' == 'confirmed'", True),
        ("'CONFIRMED' != 'confirmed'", False),
        ("$response.body#/0/status == 'confirmed'", True),
        ("$response.body#/0/status == 'CONFIRMED'", True),
        ("$response.body#/0/status != 'pending'", True),
        ("$steps.requestWithdrawal.outputs.status == 'PENDING'", True),
        ("$inputs.name == 'o''brien'", True),
        ("'straße' == 'STRASSE'", True),  # casefold, not just lower()
    ],
)
def test_string_comparison_is_case_insensitive(condition, expected):
    assert cond(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("$statusCode == 200.0", True),  # int vs decimal literal
        ("$statusCode == '200'", True),  # numeric string vs number
        ("'200' == $statusCode", True),
        ("$statusCode < '201'", True),
        ("$statusCode == ' 200 '", True),  # surrounding spaces in a numeric string
        ("$statusCode == '2xx'", False),  # non-numeric string never equals a number
        ("$statusCode != '2xx'", True),
        ("$statusCode < 'abc'", False),
        ("$inputs.quantity == 10.5", True),
        ("$inputs.quantity > 10", True),
        ("$inputs.quantity <= 10.50", True),
        ("$inputs.ratio == 0.1", True),  # float 0.1 compares as Decimal('0.1')
        ("$inputs.window == 5e3", True),
        ("$response.body#/0/quantity == $inputs.quantity", True),
        # two numeric strings are ordered as numbers, not as text
        ("'10' > '9'", True),
        ("$steps.getBalances.outputs.balances#/USDC/available >= $inputs.quantity", True),
        # but equality of two strings stays textual: ids like '007' and '7' differ
        ("'007' == '7'", False),
        ("'1.0' == '1'", False),
    ],
)
def test_numeric_comparison_and_coercion(condition, expected):
    assert cond(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("null == null", True),
        ("null != null", False),
        ("$inputs.nothing == null", True),
        ("$response.body#/0/fee == null", True),
        ("$response.body#/0/id != null", True),
        ("null == 0", False),
        ("null == ''", False),
        ("null == false", False),
        ("null != 0", True),
        ("null < 1", False),
        ("null > 1", False),
        ("null <= null", False),  # ordering with null is always false
        ("1 >= null", False),
        # MISSING behaves like null
        ("$inputs.absent == null", True),
        ("$response.body#/0/absent == null", True),
        ("$steps.never.outputs.x != null", False),
        ("$inputs.absent == $inputs.alsoAbsent", True),
        ("$inputs.absent < 5", False),
        ("$inputs.absent", False),  # a null condition fails (SPEC-1.1)
        ("$inputs.absent || true", True),
        ("$inputs.nothing && true", False),
    ],
)
def test_null_and_missing(condition, expected):
    assert cond(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("true == 'true'", False),
        ("true != 'true'", True),
        ("false == 0", False),
        ("true == 1", False),
        ("true < 2", False),
        ("$inputs.enabled == true", True),
        ("$inputs.enabled", True),
        ("$response.body#/0/ok", True),
        ("!$response.body#/0/ok", False),
        ("$inputs.list == $inputs.list", True),
        ("$inputs.list < $inputs.list", False),  # containers are not ordered
        ("$inputs.list == 'x'", False),
    ],
)
def test_booleans_and_other_kinds(condition, expected):
    assert cond(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("$response.body[0].id == 4242", True),
        ("$response.body[0].status == 'confirmed'", True),
        ("$response.body.0 == null", True),  # '.name' reads object keys only
        ("$response.body[1] == null", True),  # out of range
        ("$response.body[ 0 ].id == 4242", True),
        ("$inputs.list[2] == 3", True),
        ("$steps.getBalances.outputs.balances.USDC == null", True),  # output names may contain dots
        ("$steps.getBalances.outputs.balances#/USDC/locked == 0", True),
        ("$inputs.symbol[0] == null", True),  # strings are not indexed
        ("$statusCode.x == null", True),
    ],
)
def test_postfix_index_and_property(condition, expected):
    assert cond(condition) is expected


# --------------------------------------------------------------------------- the seed workflow


def test_seed_workflow_conditions_pass_on_200_and_fail_otherwise():
    document = yaml.safe_load(WORKFLOW.read_text())
    conditions = [
        criterion["condition"]
        for step in document["workflows"][0]["steps"]
        for criterion in step.get("successCriteria", [])
    ]
    assert conditions == ["$statusCode == 200"] * 3
    for condition in conditions:
        assert cond(condition, Context().with_response(200, {}, {})) is True
        assert cond(condition, Context().with_response(400, {}, {})) is False
        assert cond(condition, Context()) is False  # no response yet


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([{"id": 4242, "status": "confirmed"}], True),
        ([{"id": "4242", "status": "confirmed"}], True),  # id as a string still matches
        ([{"id": 4243}], False),
        ([], False),
        ({"id": 4242}, False),
    ],
)
def test_reconcile_condition(body, expected):
    ctx = Context(steps={"requestWithdrawal": {"withdrawalId": 4242}}).with_response(200, body, {})
    condition = "$response.body#/0/id == $steps.requestWithdrawal.outputs.withdrawalId"
    assert cond(condition, ctx) is expected


# --------------------------------------------------------------------------- malformed conditions


@pytest.mark.parametrize(
    ("condition", "fragments"),
    [
        ("", ["condition is empty"]),
        ("   ", ["condition is empty"]),
        ("$statusCode = 200", ["position 12", "single '='", "'=='"]),
        ("$statusCode == 200 & true", ["position 19", "single '&'", "'&&'"]),
        ("true | false", ["position 5", "single '|'", "'||'"]),
        ("(1 == 1", ["position 7", "expected ')' to close '(' at position 0", "end of condition"]),
        ("1 == 1)", ["position 6", "unexpected ')' after a complete condition"]),
        ("((true)", ["expected ')'"]),
        ("()", ["position 1", "expected a value after '(', found ')'"]),
        ("$statusCode ==", ["position 14", "expected a value after '=='", "end of condition"]),
        ("== 200", ["position 0", "expected a value, found '=='"]),
        ("true &&", ["expected a value after '&&'"]),
        ("|| true", ["expected a value, found '||'"]),
        ("!", ["expected a value after '!'"]),
        ("'unterminated", ["position 0", "unterminated string"]),
        ("$statusCode == 'it''s", ["position 15", "unterminated string"]),
        ("$statusCode == 200 200", ["position 19", "unexpected '200' after a complete condition"]),
        ("$statusCode == 200 true", ["unexpected 'true'"]),
        ("status == 200", ["position 0", "unknown word 'status'", "single quotes"]),
        ("True", ["unknown word 'True'"]),
        ("1.2.3 == 1", ["malformed number '1.2.3'"]),
        ("200abc == 200", ["malformed number '200abc'"]),
        ("1 < 2 < 3", ["position 6", "chained comparison '<'"]),
        ("1 == 1 == 1", ["chained comparison '=='"]),
        ("$statusCode == #", ["position 15", "unexpected character '#'"]),
        ("\"200\" == 200", ["unexpected character '\"'"]),
        ("$inputs.list[x] == 1", ["'[' must be followed by a non-negative integer index"]),
        ("$inputs.list[-1] == 1", ["'[' must be followed by a non-negative integer index"]),
        ("$response.body. == 1", ["'.' must be followed by a property name"]),
    ],
)
def test_malformed_conditions(condition, fragments):
    with pytest.raises(CriteriaError) as err:
        cond(condition)
    message = str(err.value)
    if condition.strip():
        assert repr(condition) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ("$steps.x == 1", "'$steps.x': expected '$steps.<stepId>.outputs.<name>"),
        ("$response.bodyy == 1", "'$response.bodyy': expected"),
        ("$inputs. == 1", "'$inputs.': expected '$inputs.<name>"),
        ("$foo == 1", "unknown source '$foo'"),
        ("$response.body#nope == 1", "invalid JSON pointer 'nope'"),
        ("1 == 1 || $bad", "unknown source '$bad'"),  # caught at parse time, short-circuit or not
    ],
)
def test_malformed_runtime_expression_is_a_criteria_error(condition, fragment):
    with pytest.raises(CriteriaError) as err:
        cond(condition)
    assert fragment in str(err.value)
    assert repr(condition) in str(err.value)
    assert isinstance(err.value.__cause__, ExpressionError)


def test_unsupported_expression_is_a_criteria_error():
    with pytest.raises(CriteriaError) as err:
        cond("$request.header.accept == 'x'")
    assert "not supported by this runtime" in str(err.value)
    assert isinstance(err.value.__cause__, ExpressionError)


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ("$statusCode", "the condition needs a boolean, got int 200"),
        ("'yes'", "the condition needs a boolean, got str 'yes'"),
        ("1", "needs a boolean, got Decimal"),
        ("!$statusCode", "'!' at position 0 needs a boolean, got int 200"),
        ("!1 == 2", "'!' at position 0 needs a boolean, got Decimal"),  # (!1) == 2, not !(1 == 2)
        ("!null", "'!' at position 0 needs a boolean, got NoneType"),
        ("!$inputs.absent", "'!' at position 0 needs a boolean, got _Missing MISSING"),
        ("true && $inputs.symbol", "'&&' at position 5 needs a boolean, got str 'USDC'"),
        ("$inputs.window || true", "'||' at position 15 needs a boolean, got int 5000"),
    ],
)
def test_non_boolean_results_raise(condition, fragment):
    with pytest.raises(CriteriaError) as err:
        cond(condition)
    assert fragment in str(err.value)
    assert repr(condition) in str(err.value)


def test_condition_must_be_a_string():
    with pytest.raises(CriteriaError, match="must be a string, got int"):
        evaluate_condition(200, CTX)


def test_criteria_error_is_a_workflow_error():
    with pytest.raises(WorkflowError):
        cond("1 =")


# --------------------------------------------------------------------------- Criterion objects


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        ({"condition": "$statusCode == 200"}, True),
        ({"condition": "$statusCode == 201"}, False),
        ({"condition": "$statusCode == 200", "type": "simple"}, True),
        ({"context": "$statusCode", "condition": "^200$", "type": "regex"}, True),
        ({"context": "$statusCode", "condition": "^20[01]$", "type": "regex"}, True),
        ({"context": "$statusCode", "condition": "^201$", "type": "regex"}, False),
        ({"context": "$statusCode", "condition": "^2", "type": "regex"}, True),
        ({"context": "$response.body#/0/status", "condition": "^Confirmed$", "type": "regex"}, True),
        ({"context": "$response.body#/0/status", "condition": "^confirmed$", "type": "regex"}, False),
        ({"context": "$response.body#/0/status", "condition": "(?i)^confirmed$", "type": "regex"}, True),
        ({"context": "$response.header.content-type", "condition": "json", "type": "regex"}, True),
        ({"context": "$response.body#/0/ok", "condition": "^true$", "type": "regex"}, True),
        ({"context": "$response.body#/0", "condition": '"id":4242', "type": "regex"}, True),
        ({"context": "$response.body#/0/absent", "condition": ".*", "type": "regex"}, False),
        ({"context": "$response.body#/0/fee", "condition": ".*", "type": "regex"}, False),
        ({"context": "$inputs.empty", "condition": "^$", "type": "regex"}, True),
    ],
)
def test_check(criterion, expected):
    assert check(criterion, CTX) is expected


def test_regex_on_missing_response_fails():
    assert check({"context": "$statusCode", "condition": "^200$", "type": "regex"}, Context()) is False


@pytest.mark.parametrize(
    ("criterion", "fragment"),
    [
        ({}, "has no condition"),
        ({"condition": ""}, "has no condition"),
        ({"condition": "  "}, "has no condition"),
        ({"condition": None}, "has no condition"),
        ({"condition": "^200$", "type": "regex"}, "regex criterion '^200$' needs a 'context'"),
        ({"condition": "^200$", "type": "regex", "context": ""}, "needs a 'context'"),
        ({"condition": "(", "type": "regex", "context": "$statusCode"}, "not a valid regular expression"),
        ({"condition": "^200$", "type": "regex", "context": "$nope"}, "unknown source '$nope'"),
        ({"condition": "^200$", "type": "regex", "context": "$request.body"}, "not supported"),
        ({"condition": "$[?count(@.pets) > 0]", "type": "jsonpath", "context": "$response.body"},
         "jsonpath criteria are not supported by this runtime"),
        ({"condition": "//pet", "type": "xpath", "context": "$response.body"},
         "xpath criteria are not supported by this runtime"),
        ({"condition": "$.a", "context": "$response.body",
          "type": {"type": "jsonpath", "version": "draft-goessner-dispatch-jsonpath-00"}},
         "jsonpath criteria are not supported"),
        ({"condition": "x", "type": "glob", "context": "$statusCode"}, "unknown criterion type 'glob'"),
        ({"condition": "$statusCode = 200"}, "single '='"),
    ],
)
def test_check_errors(criterion, fragment):
    with pytest.raises(CriteriaError) as err:
        check(criterion, CTX)
    assert fragment in str(err.value)


def test_check_needs_a_mapping():
    with pytest.raises(CriteriaError, match="must be an object, got str"):
        check("$statusCode == 200", CTX)


def test_all_pass_and_failing():
    criteria = [
        {"condition": "$statusCode == 200"},
        {"condition": "$response.body#/0/status == 'pending'"},
        {"context": "$statusCode", "condition": "^200$", "type": "regex"},
        {"context": "$statusCode", "condition": "^5", "type": "regex"},
    ]
    assert all_pass(criteria, CTX) is False
    assert failing(criteria, CTX) == ["$response.body#/0/status == 'pending'", "^5"]
    assert all_pass(criteria[::2], CTX) is True
    assert failing(criteria[::2], CTX) == []


def test_empty_criteria_pass():
    assert all_pass([], CTX) is True
    assert failing([], CTX) == []


def test_failing_raises_on_a_malformed_criterion():
    with pytest.raises(CriteriaError):
        failing([{"condition": "$statusCode == 500"}, {"condition": "(("}], CTX)


# --------------------------------------------------------------------------- compiled once


def test_compiled_criteria_evaluate_without_parsing_again(monkeypatch):
    simple = compile_criterion({"condition": "$statusCode == 200 && $response.body#/0/status == 'confirmed'"})
    regex = compile_criterion({"context": "$response.body#/0/status", "condition": "^Conf", "type": "regex"})

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed at evaluation")

    monkeypatch.setattr(expressions_module, "compile_expression", parsed)
    monkeypatch.setattr(criteria_module, "_tokenize", parsed)
    assert simple.passes(CTX) is True
    assert regex.passes(CTX) is True
    assert failing([simple, regex], CTX.with_response(500, [], {})) == [simple.condition, regex.condition]


def test_compiled_criterion_lists_the_expressions_it_reads():
    criterion = compile_condition("$statusCode == 200 && $steps.requestWithdrawal.outputs.withdrawalId[0] > 1")
    assert [e.text for e in criterion.expressions] == ["$statusCode", "$steps.requestWithdrawal.outputs.withdrawalId"]
    assert criterion.kind == "simple"


def test_an_unsupported_expression_is_refused_when_compiled_not_when_run():
    with pytest.raises(CriteriaError, match="not supported by this runtime"):
        compile_condition("1 == 1 || $request.header.accept == 'x'")


def test_context_on_a_simple_criterion_is_refused():
    with pytest.raises(CriteriaError, match="'context' is only used by regex criteria"):
        compile_criterion({"condition": "$statusCode == 200", "context": "$response.body"})


def test_unknown_criterion_field_is_refused():
    with pytest.raises(CriteriaError, match=re.escape("unknown field(s) condtion")):
        compile_criterion({"condition": "$statusCode == 200", "condtion": "x"})
    assert compile_criterion({"condition": "$statusCode == 200", "x-note": "kept out"}).passes(CTX)
