"""One attempt at one Arazzo step: build the request, send it, judge the response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpx_worker.arazzo.workflow import RetryAction, Step, build_request, failed_conditions, retry_action, step_outputs, succeeded
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.arazzo.expressions import Context


@dataclass(frozen=True)
class Attempt:
    step_id: str
    status_code: int
    outputs: dict[str, Any]
    succeeded: bool
    retry: RetryAction | None = None
    failed: list[str] = field(default_factory=list)


def attempt_step(step: Step, ctx: Context, client: BackpackClient) -> Attempt:
    """Send the step's request once. Exchange failures propagate as typed errors."""
    request = build_request(step, ctx)
    response = client.send(request)
    judged = ctx.with_response(response.status, response.body, response.headers, response.url, request.method)
    ok = succeeded(step, judged)
    return Attempt(
        step.step_id,
        response.status,
        step_outputs(step, judged),
        ok,
        None if ok else retry_action(step, judged),
        [] if ok else failed_conditions(step, judged),
    )
