"""The workflow's steps as Celery tasks, one per Arazzo step, chained in the document's order.

Each task carries the job id only; everything else is in the job record. The
tasks are thin: the core (`worker.steps.StepRunner`) runs the step and says
what to do next.
"""

from __future__ import annotations

from celery import Task, chain

from bpx_worker.withdrawal import rules as withdrawal
from bpx_worker.config import settings as config_settings
from bpx_worker.tasks.app import app, job_store, step_runner
from bpx_worker.arazzo.workflow import withdrawal_workflow
from bpx_worker.engine.steps import Next

TASK_PREFIX = "withdrawal."


def _run(task: Task, job_id: str, step_id: str) -> dict[str, str]:
    outcome: Next = step_runner().run(job_id, step_id)
    if outcome.action == "retry":
        # A new message with a countdown (never a sleep in a worker slot); the
        # countdown is capped below the visibility timeout by Settings. The number
        # of runs is bounded by the job record (attempts, deadlines), not by Celery.
        raise task.retry(countdown=outcome.countdown)
    if outcome.action == "stop":
        task.request.chain = None  # the job has ended: the rest of the chain must not run
    return {"job_id": job_id, "step": step_id, "next": outcome.action, "state": outcome.state}


@app.task(name=TASK_PREFIX + withdrawal.BALANCE_STEP, bind=True, max_retries=None)
def get_balances(self: Task, job_id: str) -> dict[str, str]:
    return _run(self, job_id, withdrawal.BALANCE_STEP)


@app.task(name=TASK_PREFIX + withdrawal.REQUEST_STEP, bind=True, max_retries=None)
def request_withdrawal(self: Task, job_id: str) -> dict[str, str]:
    return _run(self, job_id, withdrawal.REQUEST_STEP)


@app.task(name=TASK_PREFIX + withdrawal.RECONCILE_STEP, bind=True, max_retries=None)
def reconcile_withdrawal(self: Task, job_id: str) -> dict[str, str]:
    return _run(self, job_id, withdrawal.RECONCILE_STEP)


STEP_TASKS = {
    withdrawal.BALANCE_STEP: get_balances,
    withdrawal.REQUEST_STEP: request_withdrawal,
    withdrawal.RECONCILE_STEP: reconcile_withdrawal,
}


def workflow_chain(job_id: str):
    """The chain of step tasks in the document's order. Steps already recorded are skipped when they run."""
    return chain(*(STEP_TASKS[step.step_id].si(job_id) for step in withdrawal_workflow().steps))


@app.task(name=TASK_PREFIX + "sweep")
def sweep() -> list[str]:
    """Re-dispatch unfinished jobs that have not changed for STALL_AFTER seconds."""
    stalled = [record["job_id"] for record in job_store().stalled(config_settings.get().stall_after)]
    for job_id in stalled:
        workflow_chain(job_id).apply_async()
    return stalled
