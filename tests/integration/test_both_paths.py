"""One engine, two ways to run it: every scenario ends the same in process and through Celery.

Each scenario arranges the sandbox, runs one job in this process (memory job
store) and one through the Celery worker (Redis job store), and compares what
an upstream service sees: the state, the error code and where it happened, the
outputs, and how many withdrawals the exchange recorded for each job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bpx_worker.config import settings
from bpx_worker.interfaces.api import submit_withdrawal, wait_for
from bpx_worker.jobs.record import JobRecord
from bpx_worker.withdrawal.runtime import run_withdrawal_inprocess
from tests.addresses import solana_address


@dataclass(frozen=True)
class Scenario:
    name: str
    state: str
    code: str | None = None
    step: str | None = None
    withdrawals: int = 1
    symbol: str = "USDC"
    quantity: str = "2"
    faults: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    check: Callable[[JobRecord], bool] = lambda record: True


SCENARIOS = [
    Scenario("happy path", "succeeded", check=lambda r: r.outputs["status"] == "confirmed"),
    Scenario("history lag", "succeeded", config={"history_lag": 1.2},
             check=lambda r: r.steps["reconcileWithdrawal"].polls >= 2),
    Scenario("insufficient balance", "failed", "INSUFFICIENT_FUNDS", "getBalances", withdrawals=0,
             symbol="SOL", quantity="51"),
    Scenario("rejection", "failed", "INVALID_ADDRESS", "requestWithdrawal", withdrawals=0,
             config={"reject_code": "INVALID_ADDRESS"}),
    Scenario("5xx on the POST", "needs_review", "OUTCOME_UNKNOWN", "requestWithdrawal", withdrawals=0,
             faults={"p_5xx": 1.0, "only_withdrawals": True}),
    Scenario("read timeout on the POST", "succeeded", withdrawals=1,
             faults={"latency_ms": 2500, "only_withdrawals": True},
             check=lambda r: r.steps["requestWithdrawal"].found_by_lookup),
    Scenario("commit then drop", "succeeded", faults={"p_commit_then_drop": 1.0},
             check=lambda r: r.steps["requestWithdrawal"].found_by_lookup),
    Scenario("a 2xx other than 200", "needs_review", "CRITERIA_NOT_MET", "requestWithdrawal",
             config={"withdraw_status": 202}),
    Scenario("an unknown status", "needs_review", "STATUS_NEEDS_REVIEW", "reconcileWithdrawal",
             config={"hold_status": "somethingNew"}),
    Scenario("the reconcile deadline", "needs_review", "RECONCILE_DEADLINE", "reconcileWithdrawal",
             config={"hold_status": "pending"}),
]


def _outcome(record: JobRecord, withdrawals: int) -> dict[str, Any]:
    error = record.error
    return {
        "state": record.state.value,
        "code": error.code if error else None,
        "step": error.step if error else None,
        "outputs": sorted(record.outputs),
        "withdrawals": withdrawals,
    }


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_both_paths_end_the_same(stack, sandbox, scenario):
    if scenario.faults:
        sandbox.faults(**scenario.faults)
    if scenario.config:
        sandbox.configure(**scenario.config)
    inputs = {"symbol": scenario.symbol, "blockchain": "Solana", "quantity": scenario.quantity}

    key = f"inproc-{uuid.uuid4().hex}"
    inprocess = run_withdrawal_inprocess(settings.get(), {**inputs, "address": f"In{uuid.uuid4().hex[:12]}"}, key)

    job_id = submit_withdrawal(**inputs, address=solana_address(),
                               idempotency_key=f"celery-{uuid.uuid4().hex}")
    celery = wait_for(job_id, timeout=90)

    seen = [_outcome(r, len(sandbox.withdrawals(r.client_id))) for r in (inprocess, celery)]
    expected = {"state": scenario.state, "code": scenario.code, "step": scenario.step,
                "withdrawals": scenario.withdrawals}
    for path, outcome in zip(("in process", "celery"), seen, strict=True):
        assert {k: outcome[k] for k in expected} == expected, (path, outcome)
    assert seen[0] == seen[1]
    assert scenario.check(inprocess) and scenario.check(celery)
