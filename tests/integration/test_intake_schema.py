"""Property-based runs against the intake's own OpenAPI description (schemathesis), over real HTTP with a real
worker and Redis: whatever the generated requests, valid or not, the intake never answers 5xx and its answers
match what it documents.

schemathesis' pytest loader (`from_fixture`) does not run under pytest 9, so each operation's strategy is drawn
with hypothesis directly; the list of operations is checked against the description, so a new endpoint cannot
go untested.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.integration.intake_stack import auth, intake

OPERATIONS = [
    ("POST", "/v1/withdrawals"),
    ("GET", "/v1/withdrawals"),
    ("GET", "/v1/withdrawals/{job_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
EXAMPLES = 100  # per operation and mode: the whole file runs in well under a minute


@pytest.fixture(scope="module")
def intake_schema(stack):
    with intake(stack) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def test_every_operation_of_the_description_is_exercised(intake_schema):
    described = {(op.ok().method.upper(), op.ok().path) for op in intake_schema.get_all_operations()}
    assert described == set(OPERATIONS)


# Requests the description allows may still be refused (422) by what it cannot say: an unknown asset, this
# service's limits, a cursor it never issued. So "schema-valid data is accepted" is not checked; every other
# check is, among them "no 5xx", "schema-invalid data is refused" and "answers match their documented schema".
EXCLUDED = [positive_data_acceptance]
# Operations without parameters or body have nothing to make invalid.
NEGATIVE = [op for op in OPERATIONS if op[1].startswith("/v1/")]


@pytest.mark.parametrize(("method", "path", "mode"), [*((m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS),
                                                      *((m, p, GenerationMode.NEGATIVE) for m, p in NEGATIVE)])
def test_intake_answers_as_documented_and_never_with_a_server_error(intake_schema, method, path, mode):
    operation = intake_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        # A query is text: requests leaves out a parameter whose value is None or [], and sends [x] as x. Such
        # a case reaches the intake as another, valid request, yet would be judged as the invalid one generated.
        assume(all(v is not None and not (isinstance(v, list) and len(v) < 2)
                   for part in (case.query, case.headers) for v in (part or {}).values()))
        case.call_and_validate(headers=auth(), timeout=10, excluded_checks=EXCLUDED)

    run()
