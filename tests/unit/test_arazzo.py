"""Loading the workflow documents and building requests: pure, no server."""

import copy

import pytest

from bpx_worker.config.documents import SEED_WORKFLOW, WORKER_ADDITIONS, load_yaml
from bpx_worker.arazzo.workflow import (build_request, load_workflow, parse_workflow, retry_action, seed_workflow, step_outputs,
                           succeeded, withdrawal_workflow, workflow_outputs)
from bpx_worker.errors import DocumentError
from bpx_worker.arazzo.expressions import Context

INPUTS = {"symbol": "USDC", "blockchain": "Solana", "address": "Addr1", "quantity": "1.5", "clientId": "wd-k1"}


def test_steps_order_and_operations_come_from_the_documents():
    workflow = withdrawal_workflow()
    assert [s.step_id for s in workflow.steps] == ["getBalances", "requestWithdrawal", "reconcileWithdrawal"]
    assert [(s.operation.method, s.operation.path, s.operation.instruction) for s in workflow.steps] == [
        ("GET", "/api/v1/capital", "balanceQuery"),
        ("POST", "/wapi/v1/capital/withdrawals", "withdraw"),
        ("GET", "/wapi/v1/capital/withdrawals", "withdrawalQueryAll"),
    ]
    assert workflow.outputs == {"withdrawalId": "$steps.requestWithdrawal.outputs.withdrawalId",
                                "status": "$steps.reconcileWithdrawal.outputs.reconciledStatus"}


def test_documents_are_parsed_once():
    load_yaml.cache_clear()
    load_workflow(SEED_WORKFLOW)
    load_workflow(SEED_WORKFLOW)
    assert load_yaml.cache_info().misses == 2  # the Arazzo file and the OpenAPI file, once each
    assert load_yaml.cache_info().hits >= 2


def test_seed_request_body_leaves_missing_optional_inputs_out():
    step = seed_workflow().step("requestWithdrawal")
    request = build_request(step, Context(inputs=INPUTS))
    assert request.body == {"symbol": "USDC", "blockchain": "Solana", "address": "Addr1", "quantity": "1.5"}
    assert "twoFactorToken" not in request.body
    assert request.headers == {}  # apiKey/signature/timestamp not given: the signer fills them


def test_worker_additions_send_the_client_id():
    request = build_request(withdrawal_workflow().step("requestWithdrawal"), Context(inputs=INPUTS))
    assert request.body["clientId"] == "wd-k1"
    assert request.signed_params() == request.body


def test_window_input_becomes_the_header_and_keeps_type_in_query():
    step = withdrawal_workflow().step("reconcileWithdrawal")
    ctx = Context(inputs={**INPUTS, "window": 7000}, steps={"requestWithdrawal": {"withdrawalId": 42}})
    request = build_request(step, ctx)
    assert request.headers == {"X-WINDOW": "7000"}
    assert request.query == {"id": 42}
    assert request.signed_params() == {"id": 42}


def test_reconcile_success_needs_the_new_withdrawal_in_history():
    step = withdrawal_workflow().step("reconcileWithdrawal")
    ctx = Context(inputs=INPUTS, steps={"requestWithdrawal": {"withdrawalId": 42}})
    empty = ctx.with_response(200, [], {})
    assert not succeeded(step, empty)
    assert retry_action(step, empty).name == "notYetRecorded"
    recorded = ctx.with_response(200, [{"id": 42, "status": "pending"}], {})
    assert succeeded(step, recorded)
    assert step_outputs(step, recorded) == {"reconciledStatus": "pending", "reconciledId": 42}


def test_seed_reconcile_accepts_any_200_as_published():
    step = seed_workflow().step("reconcileWithdrawal")
    ctx = Context(inputs=INPUTS, steps={"requestWithdrawal": {"withdrawalId": 42}})
    assert succeeded(step, ctx.with_response(200, [], {}))
    assert step_outputs(step, ctx.with_response(200, [], {})) == {"reconciledStatus": None, "reconciledId": None}


def test_workflow_outputs_map_step_outputs():
    ctx = Context(inputs=INPUTS, steps={"requestWithdrawal": {"withdrawalId": 9, "status": "pending"},
                                        "reconcileWithdrawal": {"reconciledStatus": "confirmed"}})
    assert workflow_outputs(withdrawal_workflow(), ctx) == {"withdrawalId": 9, "status": "confirmed"}


def test_unknown_operation_id_is_a_clear_error():
    document = copy.deepcopy(load_yaml(SEED_WORKFLOW))
    document["workflows"][0]["steps"][0]["operationId"] = "no_such_operation"
    with pytest.raises(DocumentError, match="no_such_operation"):
        parse_workflow(document, SEED_WORKFLOW.parent)


def test_missing_source_description_is_a_clear_error(tmp_path):
    with pytest.raises(DocumentError, match="not found"):
        parse_workflow(load_yaml(SEED_WORKFLOW), tmp_path)


def test_additions_refuse_a_changed_seed(tmp_path):
    document = copy.deepcopy(load_yaml(SEED_WORKFLOW))
    document["workflows"][0]["steps"][1]["stepId"] = "renamed"
    import yaml

    changed = SEED_WORKFLOW.parent / "changed-seed.yml"
    try:
        changed.write_text(yaml.safe_dump(document))
        with pytest.raises(DocumentError, match="does not apply"):
            load_workflow(changed, WORKER_ADDITIONS)
    finally:
        changed.unlink()
