"""The pure Arazzo core: load and compile a workflow, build requests, judge responses.

Loading (`load_workflow`, `parse_workflow`, `withdrawal_workflow`,
`seed_workflow`) compiles every runtime expression and criterion of the
workflow and refuses, naming the document, step and field, anything the
runtime could not run exactly as written. The functions that run a step
(`build_request`, `succeeded`, `failed_conditions`, `retry_action`,
`step_outputs`, `workflow_outputs`) only evaluate what was compiled. No I/O
beyond reading the YAML documents; no Celery, Redis or HTTP library.
"""

from bpx_worker.arazzo.criteria import Criterion, compile_criterion
from bpx_worker.arazzo.expressions import (
    MISSING,
    Context,
    Expression,
    Value,
    compile_expression,
    compile_value,
)
from bpx_worker.arazzo.loader import load_workflow, parse_workflow, seed_workflow, withdrawal_workflow
from bpx_worker.arazzo.model import (
    HttpRequest,
    Operation,
    Parameter,
    RequestBody,
    RetryAction,
    RetryOverride,
    Step,
    Workflow,
)
from bpx_worker.arazzo.workflow import (
    build_request,
    failed_conditions,
    retry_action,
    step_outputs,
    succeeded,
    workflow_outputs,
)

__all__ = [
    "MISSING",
    "Context",
    "Criterion",
    "Expression",
    "HttpRequest",
    "Operation",
    "Parameter",
    "RequestBody",
    "RetryAction",
    "RetryOverride",
    "Step",
    "Value",
    "Workflow",
    "build_request",
    "compile_criterion",
    "compile_expression",
    "compile_value",
    "failed_conditions",
    "load_workflow",
    "parse_workflow",
    "retry_action",
    "seed_workflow",
    "step_outputs",
    "succeeded",
    "withdrawal_workflow",
    "workflow_outputs",
]
