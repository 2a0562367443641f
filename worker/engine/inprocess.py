"""The workflow run in process, step by step: the reference path and the benchmark baseline.

No Celery and no Redis: the same runtime and client the tasks use, with
retries of transient failures done in process by tenacity (the Celery tasks
do theirs with Celery countdowns instead). An ambiguous withdrawal request is
never re-sent here: the run stops with `needs_review`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.arazzo.workflow import Step, Workflow, workflow_outputs
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.errors import AmbiguousError, RejectedError, TransientError
from bpx_worker.engine.execution import Attempt, attempt_step
from bpx_worker.arazzo.expressions import Context
from bpx_worker.engine.policy import Backoff

log = structlog.get_logger(__name__)


@dataclass
class RunResult:
    state: str  # succeeded | failed | needs_review
    outputs: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, Any] | None = None


class _Stop(Exception):
    def __init__(self, state: str, step: str, code: str, message: str):
        super().__init__(message)
        self.state, self.step, self.code, self.message = state, step, code, message


def run_workflow(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    client: BackpackClient,
    *,
    retry: Backoff,
    poll: Backoff,
    poll_deadline: float,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """Run every step in document order; return the workflow outputs and each step's record."""
    result = RunResult("running")
    outputs: dict[str, dict[str, Any]] = {}
    try:
        for step in workflow.steps:
            started = time.time()
            attempts = 0
            polls = 0
            while True:
                ctx = Context(inputs=dict(inputs), steps=dict(outputs))
                attempt, made = _send(step, ctx, client, retry, sleep)
                attempts += made
                if attempt.succeeded:
                    if _settled(step.step_id, attempt, inputs):
                        break
                elif attempt.retry is None or polls >= attempt.retry.retry_limit:
                    raise _Stop("failed", step.step_id, "CRITERIA_NOT_MET", "; ".join(attempt.failed))
                if time.time() - started > poll_deadline:
                    raise _Stop("needs_review", step.step_id, "DEADLINE", "not settled before the deadline")
                sleep(poll.delay(polls))
                polls += 1
            outputs[step.step_id] = attempt.outputs
            result.steps[step.step_id] = {
                "status_code": attempt.status_code,
                "outputs": attempt.outputs,
                "attempts": attempts,
                "seconds": round(time.time() - started, 3),
            }
    except _Stop as stop:
        result.state = stop.state
        result.error = {"step": stop.step, "code": stop.code, "message": stop.message}
        return result
    result.state = "succeeded"
    result.outputs = workflow_outputs(workflow, Context(inputs=dict(inputs), steps=outputs))
    return result


def _send(step: Step, ctx: Context, client: BackpackClient, retry: Backoff, sleep) -> tuple[Attempt, int]:
    step_id = step.step_id
    retrying = Retrying(
        stop=stop_after_attempt(retry.max_attempts or 1),
        wait=lambda state: retry.delay(state.attempt_number - 1),
        retry=retry_if_exception_type(TransientError),
        sleep=sleep,
        reraise=True,
    )
    try:
        for round_ in retrying:
            with round_:
                attempt = attempt_step(step, ctx, client)
            made = round_.retry_state.attempt_number
    except RejectedError as exc:
        raise _Stop("failed", step_id, exc.code, exc.message) from exc
    except AmbiguousError as exc:
        raise _Stop("needs_review", step_id, "AMBIGUOUS", str(exc)) from exc
    except TransientError as exc:
        raise _Stop("failed", step_id, "TRANSIENT_EXHAUSTED", str(exc)) from exc
    return attempt, made


def _settled(step_id: str, attempt: Attempt, inputs: Mapping[str, Any]) -> bool:
    """Apply the withdrawal rules on top of the document's criteria."""
    if step_id == withdrawal.BALANCE_STEP:
        problem = withdrawal.shortfall(attempt.outputs.get("balances"), inputs["symbol"], Decimal(inputs["quantity"]))
        if problem:
            raise _Stop("failed", step_id, "INSUFFICIENT_FUNDS", problem + " (checked before sending)")
    if step_id == withdrawal.RECONCILE_STEP:
        status = attempt.outputs.get("reconciledStatus")
        settled = withdrawal.settlement(status)
        if settled == "needs_review":
            raise _Stop("needs_review", step_id, "STATUS", f"withdrawal status {status!r}")
        return settled == "confirmed"
    return True


def run_withdrawal_inprocess(settings, inputs: Mapping[str, Any], idempotency_key: str, *,
                             seed_only: bool = False) -> RunResult:
    """Run the withdrawal workflow in process with the configured keys and exchange."""
    from bpx_worker.arazzo.workflow import seed_workflow, withdrawal_workflow
    from bpx_worker.engine.policy import reconcile_policy, retry_policy
    from bpx_worker.exchange.signer import Signer

    client = BackpackClient.from_settings(settings, Signer.from_secret(settings.api_key(), settings.api_secret()))
    workflow = seed_workflow() if seed_only else withdrawal_workflow()
    try:
        return run_workflow(workflow, {**inputs, "clientId": withdrawal.client_id(idempotency_key)}, client,
                            retry=retry_policy(settings), poll=reconcile_policy(settings),
                            poll_deadline=settings.reconcile_deadline)
    finally:
        client.close()
