"""Loading the workflow documents and building requests: pure, no server."""

import copy
import os
import re
from pathlib import Path

import jsonpatch
import pytest
import yaml

from bpx_worker.arazzo import (
    Context,
    Criterion,
    RetryOverride,
    Value,
    build_request,
    criteria,
    expressions,
    failed_conditions,
    load_workflow,
    parse_workflow,
    retry_action,
    seed_workflow,
    step_outputs,
    succeeded,
    withdrawal_workflow,
    workflow_outputs,
)
from bpx_worker.config.documents import SEED_WORKFLOW, WORKER_ADDITIONS, load_yaml
from bpx_worker.errors import DocumentError, ExpressionError

INPUTS = {"symbol": "USDC", "blockchain": "Solana", "address": "Addr1", "quantity": "1.5", "clientId": "wd-k1"}


def test_steps_order_and_operations_come_from_the_documents():
    workflow = withdrawal_workflow()
    assert [s.step_id for s in workflow.steps] == ["getBalances", "requestWithdrawal", "reconcileWithdrawal"]
    assert [(s.operation.method, s.operation.path, s.operation.instruction) for s in workflow.steps] == [
        ("GET", "/api/v1/capital", "balanceQuery"),
        ("POST", "/wapi/v1/capital/withdrawals", "withdraw"),
        ("GET", "/wapi/v1/capital/withdrawals", "withdrawalQueryAll"),
    ]
    assert {name: value.source for name, value in workflow.outputs.items()} == {
        "withdrawalId": "$steps.requestWithdrawal.outputs.withdrawalId",
        "status": "$steps.reconcileWithdrawal.outputs.reconciledStatus",
    }


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
    changed = SEED_WORKFLOW.parent / "changed-seed.yml"
    try:
        changed.write_text(yaml.safe_dump(document))
        with pytest.raises(DocumentError, match="does not apply"):
            load_workflow(changed, WORKER_ADDITIONS)
    finally:
        changed.unlink()


# --- parse once: loading compiles, running only evaluates ------------------------------------


def _seed_document():
    return copy.deepcopy(load_yaml(SEED_WORKFLOW))


def _patched_document():
    return jsonpatch.apply_patch(load_yaml(SEED_WORKFLOW), load_yaml(WORKER_ADDITIONS))


def _load(document, workflow_id=None):
    return parse_workflow(document, SEED_WORKFLOW.parent, workflow_id, name="seed.yml")


def _step(document, step_id):
    return next(s for s in document["workflows"][0]["steps"] if s["stepId"] == step_id)


def test_running_a_step_never_parses_an_expression_or_criterion_again(monkeypatch):
    workflow = _load(_patched_document())

    def parsed_at_run_time(*args, **kwargs):
        raise AssertionError("text parsed while a step runs")

    monkeypatch.setattr(expressions, "compile_expression", parsed_at_run_time)
    monkeypatch.setattr(criteria, "_tokenize", parsed_at_run_time)
    monkeypatch.setattr(criteria, "compile_criterion", parsed_at_run_time)

    ctx = Context(inputs={**INPUTS, "window": 5000})
    balances, request, reconcile = workflow.steps
    assert build_request(balances, ctx).headers == {"X-WINDOW": "5000"}
    assert build_request(request, ctx).body["clientId"] == "wd-k1"
    assert step_outputs(request, ctx.with_response(200, {"id": 7, "status": "pending"}, {})) == {
        "withdrawalId": 7, "status": "pending"}
    done = Context(inputs=INPUTS, steps={"requestWithdrawal": {"withdrawalId": 7}})
    assert build_request(reconcile, done).query == {"id": 7}
    empty = done.with_response(200, [], {})
    assert not succeeded(reconcile, empty)
    assert failed_conditions(reconcile, empty) == [
        "$response.body#/0/id == $steps.requestWithdrawal.outputs.withdrawalId"]
    assert retry_action(reconcile, empty).name == "notYetRecorded"
    recorded = done.with_response(200, [{"id": 7, "status": "confirmed"}], {})
    assert succeeded(reconcile, recorded)
    finished = Context(steps={"requestWithdrawal": {"withdrawalId": 7},
                              "reconcileWithdrawal": step_outputs(reconcile, recorded)})
    assert workflow_outputs(workflow, finished) == {"withdrawalId": 7, "status": "confirmed"}


def test_loading_compiles_every_expression_and_criterion_of_the_shipped_workflow():
    workflow = withdrawal_workflow()
    for step in workflow.steps:
        assert all(isinstance(p.value, Value) for p in step.parameters)
        assert all(isinstance(c, Criterion) for c in step.success_criteria)
        assert all(isinstance(v, Value) for v in step.outputs.values())
    payload = workflow.step("requestWithdrawal").request_body.payload
    assert [(path, e.text) for path, e in payload.expressions()] == [
        (".symbol", "$inputs.symbol"), (".blockchain", "$inputs.blockchain"), (".address", "$inputs.address"),
        (".quantity", "$inputs.quantity"), (".twoFactorToken", "$inputs.twoFactorToken"),
        (".clientId", "$inputs.clientId"),
    ]
    assert workflow.document == "backpack-balance-checked-withdrawal-workflow.yml (with worker-additions.yml)"


# --- load errors name the document, the step and the field ----------------------------------


def _refused(document, *fragments, workflow_id=None):
    with pytest.raises(DocumentError) as err:
        _load(document, workflow_id)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_unparsable_parameter_expression_is_a_load_error_naming_document_step_and_field():
    document = _seed_document()
    _step(document, "getBalances")["parameters"][0]["value"] = "$inputs."
    _refused(document, "seed.yml: workflow 'balance-checked-withdrawal', step 'getBalances': parameters[0].value: "
                       "invalid runtime expression '$inputs.'")


def test_dollar_string_that_does_not_parse_is_refused_not_sent_as_text():
    document = _seed_document()
    _step(document, "requestWithdrawal")["requestBody"]["payload"]["note"] = "$steps.getBalances.balances"
    _refused(document, "step 'requestWithdrawal': requestBody.payload.note: invalid runtime expression "
                       "'$steps.getBalances.balances'", "must be a runtime expression")


def test_unparsable_embedded_expression_in_payload_is_a_load_error():
    document = _seed_document()
    _step(document, "requestWithdrawal")["requestBody"]["payload"]["memo"] = "for {$inputs.symbol}/{$input.x}"
    _refused(document, "step 'requestWithdrawal': requestBody.payload.memo: invalid runtime expression '$input.x'")


def test_output_that_does_not_parse_is_a_load_error():
    document = _seed_document()
    _step(document, "requestWithdrawal")["outputs"]["withdrawalId"] = "$response.body.id"
    _refused(document, "step 'requestWithdrawal': outputs.withdrawalId: invalid runtime expression '$response.body.id'")


def test_output_that_is_plain_text_is_a_load_error():
    document = _seed_document()
    _step(document, "requestWithdrawal")["outputs"]["withdrawalId"] = "response.body#/id"
    _refused(document, "outputs.withdrawalId: 'response.body#/id' is not a runtime expression")


def test_reference_to_an_unknown_step_is_a_load_error():
    document = _seed_document()
    _step(document, "reconcileWithdrawal")["parameters"][4]["value"] = "$steps.requestWithdrawl.outputs.withdrawalId"
    _refused(document, "step 'reconcileWithdrawal': parameters[4].value: unknown step 'requestWithdrawl'")


def test_reference_to_a_step_that_runs_later_is_a_load_error():
    document = _seed_document()
    _step(document, "getBalances")["parameters"][0]["value"] = "$steps.requestWithdrawal.outputs.withdrawalId"
    _refused(document, "step 'getBalances': parameters[0].value: step 'requestWithdrawal' has not run yet")


def test_reference_to_an_unknown_step_output_is_a_load_error():
    document = _seed_document()
    _step(document, "reconcileWithdrawal")["parameters"][4]["value"] = "$steps.requestWithdrawal.outputs.id"
    _refused(document, "parameters[4].value: step 'requestWithdrawal' has no output 'id'",
             "(its outputs: status, withdrawalId)")


def test_reference_to_an_unknown_input_is_a_load_error():
    document = _seed_document()
    _step(document, "requestWithdrawal")["requestBody"]["payload"]["symbol"] = "$inputs.asset"
    _refused(document, "step 'requestWithdrawal': requestBody.payload.symbol: unknown input 'asset'")


def test_reading_inside_an_input_with_dots_is_refused_with_a_pointer_hint():
    document = _seed_document()
    _step(document, "requestWithdrawal")["requestBody"]["payload"]["symbol"] = "$inputs.symbol.name"
    _refused(document, "unknown input 'symbol.name'", "use a JSON pointer: '$inputs.symbol#/...'")


def test_unknown_reference_in_workflow_outputs_names_the_workflow_outputs():
    document = _seed_document()
    document["workflows"][0]["outputs"]["status"] = "$steps.reconcileWithdrawal.outputs.status"
    _refused(document, "seed.yml: workflow 'balance-checked-withdrawal', outputs: outputs.status: "
                       "step 'reconcileWithdrawal' has no output 'status'")


def test_response_in_workflow_outputs_is_a_load_error():
    document = _seed_document()
    document["workflows"][0]["outputs"]["status"] = "$response.body#/status"
    _refused(document, "outputs: outputs.status: '$response.body#/status' cannot be read: workflow outputs are "
                       "computed after the last step")


def test_response_in_a_request_parameter_is_a_load_error():
    document = _seed_document()
    _step(document, "getBalances")["parameters"][0]["value"] = "$statusCode"
    _refused(document, "parameters[0].value: '$statusCode' cannot be read: there is no response before the request")


def test_unparsable_success_criterion_is_a_load_error():
    document = _seed_document()
    _step(document, "getBalances")["successCriteria"][0]["condition"] = "$statusCode = 200"
    _refused(document, "step 'getBalances': successCriteria[0]: invalid condition '$statusCode = 200'", "single '='")


def test_criterion_with_an_unknown_reference_is_a_load_error():
    document = _seed_document()
    _step(document, "getBalances")["successCriteria"][0]["condition"] = "$inputs.minimum < 5"
    _refused(document, "step 'getBalances': successCriteria[0]: unknown input 'minimum'")


def test_unparsable_failure_action_criterion_is_a_load_error():
    document = _patched_document()
    _step(document, "reconcileWithdrawal")["onFailure"][0]["criteria"][0]["condition"] = "$statusCode == "
    _refused(document, "step 'reconcileWithdrawal': onFailure[0].criteria[0]: invalid condition")


def test_misspelt_field_is_a_load_error():
    document = _seed_document()
    step = _step(document, "getBalances")
    step["sucessCriteria"] = step.pop("successCriteria")
    _refused(document, "step 'getBalances': sucessCriteria: is not a field of this Arazzo object")


def test_specification_extensions_are_accepted():
    document = _seed_document()
    document["x-owner"] = "treasury"
    _step(document, "getBalances")["x-note"] = {"any": "thing"}
    assert [s.step_id for s in _load(document).steps] == ["getBalances", "requestWithdrawal", "reconcileWithdrawal"]


def test_load_workflow_names_the_file(tmp_path):
    document = _seed_document()
    source = document["sourceDescriptions"][0]
    source["url"] = str((SEED_WORKFLOW.parent / source["url"]).resolve())
    _step(document, "getBalances")["parameters"][0]["value"] = "$nope"
    path = tmp_path / "my-flow.arazzo.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(DocumentError, match=r"^my-flow\.arazzo\.yml: workflow 'balance-checked-withdrawal', "
                                            r"step 'getBalances': parameters\[0\]\.value: "):
        load_workflow(path)


# --- parts the runtime does not implement are refused by name -------------------------------


def _add_on_success(action):
    def change(document):
        _step(document, "getBalances")["onSuccess"] = [action]
    return change


def _add_on_failure(action):
    def change(document):
        _step(document, "getBalances")["onFailure"] = [action]
    return change


def _set_param(**param):
    def change(document):
        _step(document, "getBalances")["parameters"].append(param)
    return change


def _set_content_type(content_type):
    def change(document):
        _step(document, "requestWithdrawal")["requestBody"]["contentType"] = content_type
    return change


def _set_criterion(**criterion):
    def change(document):
        _step(document, "getBalances")["successCriteria"].append(criterion)
    return change


def _set_workflow(key, value):
    def change(document):
        document["workflows"][0][key] = value
    return change


def _set_step(step_id, key, value):
    def change(document):
        _step(document, step_id)[key] = value
    return change


def _second_workflow(document):
    document["workflows"].append(copy.deepcopy(document["workflows"][0]) | {"workflowId": "other"})


def _second_source(document):
    document["sourceDescriptions"].append({"name": "other", "url": "other.yml", "type": "openapi"})


UNSUPPORTED = {
    "onSuccess goto": (_add_on_success({"name": "jump", "type": "goto", "stepId": "reconcileWithdrawal"}),
                       "step 'getBalances': onSuccess[0].type: 'goto' success actions are not supported"),
    "onSuccess end": (_add_on_success({"name": "stop", "type": "end"}),
                      "onSuccess[0].type: 'end' success actions are not supported"),
    "onSuccess reference": (_add_on_success({"reference": "$components.successActions.done"}),
                            "onSuccess[0].reference: reusable actions"),
    "onFailure goto": (_add_on_failure({"name": "jump", "type": "goto", "stepId": "getBalances"}),
                       "onFailure[0].type: 'goto' failure actions are not supported"),
    "onFailure end": (_add_on_failure({"name": "stop", "type": "end"}),
                      "onFailure[0].type: 'end' failure actions are not supported"),
    "onFailure reference": (_add_on_failure({"reference": "$components.failureActions.retry"}),
                            "onFailure[0].reference: reusable actions"),
    "retry that runs a step first": (_add_on_failure({"name": "r", "type": "retry", "stepId": "getBalances"}),
                                     "onFailure[0].stepId: a retry that first runs another step"),
    "workflow successActions": (_set_workflow("successActions", [{"name": "stop", "type": "end"}]),
                                "workflow 'balance-checked-withdrawal': successActions[0].type: 'end' success actions"),
    "components": (lambda d: d.update(components={"parameters": {"page": {"name": "page", "in": "query", "value": 1}}}),
                   "seed.yml: document: components: components (reusable inputs, parameters and actions) are not"),
    "parameter reference": (_set_param(reference="$components.parameters.page", value=2),
                            "step 'getBalances': parameters[4].reference: reusable parameters"),
    "$components expression": (_set_param(name="page", **{"in": "query"}, value="$components.parameters.page"),
                               "parameters[4].value: runtime expression '$components.parameters.page' is not"),
    "$request expression": (_set_param(name="echo", **{"in": "query"}, value="$request.query.x"),
                            "'$request.query.x' is not supported by this runtime: the request as sent is not recorded"),
    "$workflows expression": (_set_param(name="w", **{"in": "query"}, value="$workflows.other.outputs.x"),
                              "'$workflows.other.outputs.x' is not supported by this runtime"),
    "$outputs expression": (_set_param(name="o", **{"in": "query"}, value="$outputs.status"),
                            "workflow outputs exist only once the workflow has ended"),
    "cookie parameter": (_set_param(name="session", **{"in": "cookie"}, value="x"),
                         "parameters[4].in: 'cookie' parameters are not supported"),
    "dependsOn": (_set_workflow("dependsOn", ["other"]), "workflow 'balance-checked-withdrawal': dependsOn: dependsOn"),
    "replacements": (lambda d: _step(d, "requestWithdrawal")["requestBody"].update(
                         replacements=[{"target": "/symbol", "value": "SOL"}]),
                     "step 'requestWithdrawal': requestBody.replacements: replacements are not supported"),
    "form-encoded body": (_set_content_type("application/x-www-form-urlencoded"),
                          "requestBody.contentType: 'application/x-www-form-urlencoded' bodies are not supported"),
    "XML body": (_set_content_type("application/xml"), "requestBody.contentType: 'application/xml' bodies"),
    "text payload": (lambda d: _step(d, "requestWithdrawal")["requestBody"].update(payload="symbol={$inputs.symbol}"),
                     "requestBody.payload: must be a JSON object, or a runtime expression that yields one"),
    "jsonpath criterion": (_set_criterion(context="$response.body", type="jsonpath", condition="$[?@.USDC]"),
                           "successCriteria[1]: jsonpath criteria are not supported"),
    "xpath criterion": (_set_criterion(context="$response.body", type={"type": "xpath", "version": "xpath-30"},
                                       condition="//USDC"),
                        "successCriteria[1]: xpath criteria are not supported"),
    "context on a simple criterion": (_set_criterion(context="$response.body", condition="$statusCode == 200"),
                                      "'context' is only used by regex criteria"),
    "operationPath": (_set_step("getBalances", "operationPath", "{$sourceDescriptions.backpackApi.url}#/paths/x/get"),
                      "step 'getBalances': operationPath: operationPath is not supported"),
    "a step that runs a workflow": (_set_step("getBalances", "workflowId", "other"),
                                    "step 'getBalances': workflowId: a step that runs a workflow is not supported"),
    "inputs $ref": (_set_workflow("inputs", {"$ref": "#/components/inputs/withdrawal"}),
                    "inputs.$ref: a $ref in inputs"),
    "two workflows, none chosen": (_second_workflow, ("document: workflows: 2 workflows (balance-checked-withdrawal, "
                                                      "other); this runtime runs one, so choose it by workflowId")),
    "two source descriptions": (_second_source, "document: sourceDescriptions: 2 source descriptions"),
    "arazzo source description": (lambda d: d["sourceDescriptions"][0].update(type="arazzo"),
                                  "sourceDescriptions[0].type: 'arazzo' source descriptions are not supported"),
    "remote source description": (lambda d: d["sourceDescriptions"][0].update(url="https://example.com/api.yml"),
                                  "sourceDescriptions[0].url: 'https://example.com/api.yml' is a remote URL"),
}


@pytest.mark.parametrize("part", list(UNSUPPORTED))
def test_a_part_the_runtime_does_not_implement_is_a_load_error_naming_it(part):
    change, fragment = UNSUPPORTED[part]
    document = _seed_document()
    change(document)
    _refused(document, fragment, "seed.yml: ")


def test_one_of_several_workflows_can_be_chosen_by_id():
    document = _seed_document()
    _second_workflow(document)
    assert _load(document, "other").workflow_id == "other"
    _refused(document, "no workflow 'missing' (the document has balance-checked-withdrawal, other)",
             workflow_id="missing")


def test_empty_unsupported_parts_are_harmless():
    document = _seed_document()
    document["components"] = {}
    document["workflows"][0]["dependsOn"] = []
    _step(document, "getBalances")["onSuccess"] = []
    assert _load(document).step("getBalances").retry_actions == ()


# --- what the runtime implements, it honours as written -------------------------------------

PETS_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "pets", "version": "1"},
    "paths": {
        "/pets/{petId}": {"get": {"operationId": "getPet"}},
        "/orders": {"post": {"operationId": "placeOrder",
                             "requestBody": {"content": {"application/json": {}}}}},
        "/forms": {"post": {"operationId": "postForm",
                            "requestBody": {"content": {"application/x-www-form-urlencoded": {}}}}},
    },
}


def _pets(tmp_path, steps, **workflow):
    (tmp_path / "pets.openapi.yml").write_text(yaml.safe_dump(PETS_OPENAPI))
    document = {
        "arazzo": "1.0.1",
        "info": {"title": "pets", "version": "1"},
        "sourceDescriptions": [{"name": "pets", "url": "pets.openapi.yml", "type": "openapi"}],
        "workflows": [{"workflowId": "buy", "inputs": {"type": "object", "properties": {"id": {}, "qty": {}}},
                       "steps": steps, **workflow}],
    }
    return document


def test_path_parameters_fill_the_template_and_embedded_expressions_are_evaluated(tmp_path):
    document = _pets(tmp_path, [
        {"stepId": "find", "operationId": "$sourceDescriptions.pets.getPet",
         "parameters": [{"name": "petId", "in": "path", "value": "$inputs.id"},
                        {"name": "X-Trace", "in": "header", "value": "pet-{$inputs.id}"}],
         "outputs": {"name": "$response.body#/name"}},
        {"stepId": "order", "operationId": "placeOrder",
         "requestBody": {"payload": {"pet": "$steps.find.outputs.name", "lines": [{"n": "$inputs.qty"}],
                                     "note": "{$inputs.qty} x {$steps.find.outputs.name}"}}},
    ])
    workflow = parse_workflow(document, tmp_path, name="pets.arazzo.yml")
    find, order = workflow.steps
    request = build_request(find, Context(inputs={"id": 12}))
    assert (request.path, request.headers) == ("/pets/12", {"X-Trace": "pet-12"})
    ctx = Context(inputs={"qty": 2}, steps={"find": {"name": "Rex"}})
    assert build_request(order, ctx).body == {"pet": "Rex", "lines": [{"n": 2}], "note": "2 x Rex"}
    assert build_request(order, ctx).content_type == "application/json"


def test_a_path_parameter_with_no_value_is_refused_when_the_request_is_built(tmp_path):
    document = _pets(tmp_path, [{"stepId": "find", "operationId": "getPet",
                                 "parameters": [{"name": "petId", "in": "path", "value": "$inputs.id"}]}])
    step = parse_workflow(document, tmp_path).steps[0]
    with pytest.raises(ExpressionError, match="path parameter 'petId' has no value"):
        build_request(step, Context())


def test_a_path_template_without_its_parameter_is_a_load_error(tmp_path):
    document = _pets(tmp_path, [{"stepId": "find", "operationId": "getPet"}])
    needs = "step 'find': parameters: '/pets/{petId}' needs path parameter(s) petId"
    with pytest.raises(DocumentError, match=re.escape(needs)):
        parse_workflow(document, tmp_path, name="pets.arazzo.yml")


def test_an_operation_with_a_form_body_is_refused_when_the_step_sends_one(tmp_path):
    document = _pets(tmp_path, [{"stepId": "form", "operationId": "postForm",
                                 "requestBody": {"payload": {"a": "$inputs.id"}}}])
    with pytest.raises(DocumentError, match="step 'form': requestBody: 'application/x-www-form-urlencoded' bodies"):
        parse_workflow(document, tmp_path, name="pets.arazzo.yml")


def test_workflow_parameters_and_failure_actions_apply_to_every_step_unless_the_step_has_its_own(tmp_path):
    retry = {"name": "again", "type": "retry", "retryAfter": 2.5, "criteria": [{"condition": "$statusCode == 503"}]}
    document = _pets(
        tmp_path,
        [{"stepId": "find", "operationId": "getPet",
          "parameters": [{"name": "petId", "in": "path", "value": "$inputs.id"},
                         {"name": "x-trace", "in": "header", "value": "step"}]},
         {"stepId": "order", "operationId": "placeOrder", "requestBody": {"payload": {"q": "$inputs.qty"}},
          "onFailure": []}],
        parameters=[{"name": "X-Trace", "in": "header", "value": "workflow"}],
        failureActions=[retry],
    )
    find, order = parse_workflow(document, tmp_path).steps
    assert build_request(find, Context(inputs={"id": 1})).headers == {"x-trace": "step"}
    assert build_request(order, Context(inputs={"qty": 1})).headers == {"X-Trace": "workflow"}
    assert [(a.name, a.retry_after, a.retry_limit) for a in find.retry_actions] == [("again", 2.5, 1)]
    assert order.retry_actions == ()


# --- the retry action: the document's values, and an override the workflow shows -----------


def test_retry_action_exposes_the_documents_values():
    (action,) = withdrawal_workflow().step("reconcileWithdrawal").retry_actions
    assert (action.name, action.retry_after, action.retry_limit) == ("notYetRecorded", 1.0, 1000)
    assert [c.condition for c in action.criteria] == ["$statusCode == 200"]
    assert action.overridden_by is None
    assert (action.effective_retry_after, action.effective_retry_limit) == (1.0, 1000)


def test_retry_override_returns_a_new_workflow_that_shows_the_override():
    loaded = withdrawal_workflow()
    overridden = loaded.with_retry_override("reconcileWithdrawal", source="settings RECONCILE_INITIAL_DELAY",
                                            retry_after=5.0)
    (action,) = overridden.step("reconcileWithdrawal").retry_actions
    assert (action.retry_after, action.retry_limit) == (1.0, 1000)  # the document's, still readable
    assert action.overridden_by == RetryOverride("settings RECONCILE_INITIAL_DELAY", 5.0, None)
    assert (action.effective_retry_after, action.effective_retry_limit) == (5.0, 1000)
    assert overridden.retry_overrides() == [("reconcileWithdrawal", "notYetRecorded", action.overridden_by)]
    assert loaded.retry_overrides() == []
    assert loaded.step("reconcileWithdrawal").retry_actions[0].overridden_by is None
    assert overridden.step("getBalances") is loaded.step("getBalances")


def test_retry_override_of_the_limit_keeps_the_documents_delay():
    overridden = withdrawal_workflow().with_retry_override(
        "reconcileWithdrawal", source="settings", retry_limit=10, action="notYetRecorded")
    (action,) = overridden.step("reconcileWithdrawal").retry_actions
    assert (action.effective_retry_after, action.effective_retry_limit) == (1.0, 10)


@pytest.mark.parametrize(
    ("step_id", "kwargs", "fragment"),
    [
        ("nope", {"retry_after": 1}, "has no step 'nope'"),
        ("getBalances", {"retry_after": 1}, "step 'getBalances' has no retry action to override"),
        ("reconcileWithdrawal", {"retry_after": 1, "action": "other"}, "has no retry action 'other'"),
        ("reconcileWithdrawal", {}, "sets neither retry_after nor retry_limit"),
        ("reconcileWithdrawal", {"retry_after": -1}, "retry_after must be >= 0"),
        ("reconcileWithdrawal", {"retry_limit": -1}, "retry_limit must be >= 0"),
    ],
)
def test_retry_override_refuses_what_it_cannot_apply(step_id, kwargs, fragment):
    with pytest.raises(DocumentError, match=re.escape(fragment)):
        withdrawal_workflow().with_retry_override(step_id, source="settings", **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [("retryAfter", -1, "onFailure[0].retryAfter: must be a number of seconds >= 0"),
     ("retryLimit", 1.5, "onFailure[0].retryLimit: must be an integer >= 0"),
     ("retryLimit", True, "onFailure[0].retryLimit: must be an integer >= 0")],
)
def test_bad_retry_values_are_load_errors(field, value, fragment):
    document = _patched_document()
    _step(document, "reconcileWithdrawal")["onFailure"][0][field] = value
    _refused(document, "step 'reconcileWithdrawal': " + fragment)


# --- the public Arazzo examples --------------------------------------------------------------

EXAMPLES = Path(os.environ.get("ARAZZO_EXAMPLES", "/work/shared/reference/arazzo-examples"))
_COMPONENTS = "components: components (reusable inputs, parameters and actions) are not supported"
_REMOTE = "is a remote URL; this runtime reads a local file"
_TWO_SOURCES = "sourceDescriptions: 2 source descriptions"

# (file, workflowId) -> the fragment the load error must contain, or None when it loads.
EXAMPLE_OUTCOMES = {
    ("jentic-arazzo-engine/fixtures/bnpl/bnpl-arazzo.yaml", "ApplyForLoanAtCheckout"):
        "step 'checkLoanCanBeProvided': onSuccess[0].type: 'end' success actions are not supported",
    ("jentic-arazzo-engine/fixtures/discord/discord.arazzo.yaml", "getUserInfoAndSendMessage"):
        "step 'getCurrentUser': outputs.userId: invalid runtime expression '$response.body.id'",
    ("jentic-arazzo-engine/fixtures/discord/discord.arazzo.yaml", "listUserGuilds"):
        "step 'getUserGuilds': outputs.guildCount: must be a runtime expression, got int",
    ("jentic-arazzo-engine/fixtures/discord/discord.arazzo.yaml", "postChannelMessage"):
        "step 'getCurrentUser': outputs.userId: invalid runtime expression '$response.body.id'",
    **{("jentic-arazzo-engine/fixtures/newyork_times/newyork_times.arazzo.yaml", w): _COMPONENTS for w in (
        "Search Articles by Keyword", "Search Articles by Date Range", "Explore Article Facets",
        "Highlight Search Terms in Results", "stories_list")},
    **{("jentic-arazzo-engine/fixtures/pet_coupons/pet-coupons.arazzo.yaml", w): _COMPONENTS
       for w in ("apply-coupon", "buy-available-pet", "place-order")},
    ("jentic-arazzo-engine/fixtures/sample_login_workflow/login_workflow.yaml", "loginWorkflow"):
        "step 'loginStep': outputs.token: invalid runtime expression '$response.body.token'",
    ("jentic-arazzo-engine/fixtures/sample_login_workflow/login_workflow.yaml", "failedLoginWorkflow"):
        "step 'loginStep': outputs.error: invalid runtime expression '$response.body.error'",
    ("jentic-arazzo-engine/fixtures/sample_test/example_workflow.yaml", "exampleWorkflow"):
        "step 'simpleStep': outputs.message: invalid runtime expression '$response.body.message'",
    **{("jentic-arazzo-engine/fixtures/spotify/spotify.arazzo.yaml", w): _TWO_SOURCES
       for w in ("getSpotifyToken", "searchTracks", "getTrackDetails")},
    **{("jentic-arazzo-engine/fixtures/train/train.arazzo.yaml", w): _COMPONENTS for w in (
        "Plan a Trip", "Manage Bookings", "Search Stations", "bookings_read", "Find Trips", "stations_list",
        "trips_list", "bookings_create", "bookings_list", "payment_create", "bookings_delete")},
    ("jentic-arazzo-engine/fixtures/xkcd/xkcd.arazzo.yaml", "getCurrentComic"):
        "step 'getLatestComicStep': operationPath: operationPath is not supported",
    ("jentic-arazzo-engine/fixtures/xkcd/xkcd.arazzo.yaml", "getComicById"):
        "step 'getSpecificComicStep': operationPath: operationPath is not supported",
    ("jentic-arazzo-engine/test_data/cross_source/cross_source.arazzo.yaml", "crossSourceWorkflow"): _TWO_SOURCES,
    ("jentic-arazzo-engine/test_data/petstore/operation_id.arazzo.yaml", "operationIdWorkflow"): _REMOTE,
    ("jentic-arazzo-engine/test_data/petstore/single_source.arazzo.yaml", "listThenFetchPet"): _REMOTE,
    ("oai-arazzo-spec/examples-1.0.0/ExtendedParametersExample.arazzo.yaml", "animal-workflow"):
        "sourceDescriptions[0].url: source description 'animals' not found",
    # The document names operationId PAR; its OpenAPI description spells it Par.
    ("oai-arazzo-spec/examples-1.0.0/FAPI-PAR.arazzo.yaml", "OIDC-PAR-AuthzCode"):
        "step 'PARStep': operationId: '$sourceDescriptions.auth-api.PAR' is not in the OpenAPI description",
    ("oai-arazzo-spec/examples-1.0.0/LoginAndRetrievePets.arazzo.yaml", "loginUserRetrievePet"): _REMOTE,
    ("oai-arazzo-spec/examples-1.0.0/bnpl-arazzo.yaml", "ApplyForLoanAtCheckout"): _REMOTE,
    ("oai-arazzo-spec/examples-1.0.0/oauth.arazzo.yaml", "refresh-token-flow"):
        "step 'do-the-auth-flow': workflowId: a step that runs a workflow is not supported",
    ("oai-arazzo-spec/examples-1.0.0/oauth.arazzo.yaml", "client-credentials-flow"):
        "step 'get-client-creds-token': requestBody.contentType: 'application/x-www-form-urlencoded' bodies",
    ("oai-arazzo-spec/examples-1.0.0/oauth.arazzo.yaml", "authorization-code-flow"):
        "step 'get-access-token': requestBody.contentType: 'application/x-www-form-urlencoded' bodies",
    **{("oai-arazzo-spec/examples-1.0.0/pet-coupons.arazzo.yaml", w): _COMPONENTS
       for w in ("apply-coupon", "buy-available-pet", "place-order")},
    ("oai-arazzo-spec/schema-tests-v1.0/fail/invalid-arazzo-version.yaml", "workflow1"):
        "arazzo: unsupported Arazzo version 2",
    ("oai-arazzo-spec/schema-tests-v1.0/pass/bnpl-example.yaml", "ApplyForLoanAtCheckout"): _REMOTE,
    **{("oai-arazzo-spec/schema-tests-v1.0/pass/oauth-example.yaml", w):
       "sourceDescriptions[0].url: source description 'apim-auth' not found"
       for w in ("refresh-token-flow", "client-credentials-flow", "authorization-code-flow")},
    **{("oai-arazzo-spec/schema-tests-v1.0/pass/pet-coupons-example.yaml", w): _COMPONENTS
       for w in ("apply-coupon", "buy-available-pet", "place-order")},
}

needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"no Arazzo examples at {EXAMPLES} (ARAZZO_EXAMPLES)")


def _arazzo_documents(root):
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
            document = load_yaml(path)
            if isinstance(document, dict) and "arazzo" in document:
                for workflow in document.get("workflows") or ():
                    found[(str(path.relative_to(root)), workflow["workflowId"])] = document
    return found


def _assert_nothing_dropped(raw, workflow):
    """Every step, parameter, criterion, output and failure action of `raw` is in the compiled workflow."""
    raw_steps = raw["steps"]
    assert [s.step_id for s in workflow.steps] == [s["stepId"] for s in raw_steps]
    for raw_step, step in zip(raw_steps, workflow.steps, strict=True):
        names = {(p["name"].lower() if p["in"] == "header" else p["name"], p["in"])
                 for p in [*(raw.get("parameters") or ()), *(raw_step.get("parameters") or ())]}
        assert {(p.name.lower() if p.location == "header" else p.name, p.location) for p in step.parameters} == names
        conditions = [c["condition"] for c in raw_step.get("successCriteria") or ()]
        assert [c.condition for c in step.success_criteria] == conditions
        assert set(step.outputs) == set(raw_step.get("outputs") or {})
        failure = raw_step["onFailure"] if "onFailure" in raw_step else raw.get("failureActions") or []
        assert [a.name for a in step.retry_actions] == [a.get("name", "retry") for a in failure]
        assert (step.request_body is None) == ("requestBody" not in raw_step)
    assert set(workflow.outputs) == set(raw.get("outputs") or {})


@needs_examples
def test_every_public_example_is_in_the_outcome_table():
    assert set(_arazzo_documents(EXAMPLES)) == set(EXAMPLE_OUTCOMES)


@needs_examples
@pytest.mark.parametrize(("file", "workflow_id"), sorted(EXAMPLE_OUTCOMES))
def test_public_example_loads_whole_or_is_refused_naming_the_unsupported_part(file, workflow_id):
    path = EXAMPLES / file
    document = load_yaml(path)
    expected = EXAMPLE_OUTCOMES[(file, workflow_id)]
    if expected is None:
        workflow = parse_workflow(document, path.parent, workflow_id, name=path.name)
        raw = next(w for w in document["workflows"] if w["workflowId"] == workflow_id)
        _assert_nothing_dropped(raw, workflow)
        return
    with pytest.raises(DocumentError) as err:
        parse_workflow(document, path.parent, workflow_id, name=path.name)
    assert str(err.value).startswith(f"{path.name}: ")
    assert expected in str(err.value)


def test_the_shipped_workflow_loads_whole():
    _assert_nothing_dropped(_patched_document()["workflows"][0], withdrawal_workflow())
    _assert_nothing_dropped(_seed_document()["workflows"][0], seed_workflow())
