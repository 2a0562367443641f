"""The workflow's steps as Celery tasks, generated from the document: one per step, chained in its order.

Each task is named `withdrawal.<stepId>` (operators find each step by name in
Flower) and carries the job id only, its one argument (Flower's task list shows
it); everything else is in the job record. The tasks are thin: the engine runs
the step and says what to do next.

A run that ends its job `failed` or `needs_review` raises `JobEnded` once the
record is written, so the task ends in Celery's FAILURE state carrying the code
and Flower's counts match the jobs. It is an expected exception (`throws`): no
traceback is logged, Celery does not retry it, the chain stops, and the message
is acknowledged like any finished task (`task_acks_on_failure_or_timeout`).
A job that ends, however it ends, gets its callback sent by a task of its own.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import Task, chain
from celery.canvas import Signature

from bpx_worker import metrics
from bpx_worker.arazzo import Workflow, withdrawal_workflow
from bpx_worker.config import settings as config_settings
from bpx_worker.engine.engine import is_polled
from bpx_worker.errors import ConfigurationError, JobEnded
from bpx_worker.jobs.record import ErrorCode, JobState
from bpx_worker.tasks.app import app, job_store, poll_schedule, step_engine, unconfigured_engine
from bpx_worker.tasks.callbacks import deliver_callback

TASK_PREFIX = "withdrawal."
_ENDED_BADLY = frozenset({JobState.FAILED, JobState.NEEDS_REVIEW})


def _run(task: Task, job_id: str, step_id: str) -> dict[str, Any]:
    started = time.monotonic()
    # A re-queued run carries its due time as its ETA.
    late_by = _late_by(task.request.eta)
    try:
        engine = step_engine()
    except ConfigurationError as exc:
        outcome = unconfigured_engine().end_job(job_id, step_id, ErrorCode.CONFIGURATION, str(exc))
    else:
        outcome = engine.run(job_id, step_id)
    metrics.observe_run(step_id, outcome.action, time.monotonic() - started, late_by)
    if outcome.action == "retry" and outcome.poll:
        # "Not yet": the poll waits in the schedule (Redis), not as a countdown message in this
        # worker's memory. The waker sends it, with others due then, in a poll round (tasks/polls.py).
        poll_schedule().schedule(job_id, step_id, time.time() + outcome.countdown)
        task.request.chain = None
        return {"job_id": job_id, "step": step_id, "next": "poll", "state": None}
    if is_polled(withdrawal_workflow().step(step_id)) and outcome.action != "retry":
        poll_schedule().cancel(job_id, step_id)  # settled or ended: no further poll
    if outcome.action == "retry":
        # A new message with a countdown (never a sleep in a worker slot); the
        # countdown is capped below the visibility timeout by Settings. The number
        # of runs is bounded by the job record (attempts, deadlines), not by Celery.
        raise task.retry(countdown=outcome.countdown)
    if outcome.action == "stop":
        task.request.chain = None  # the job has ended: the rest of the chain must not run
        if outcome.state is not None and outcome.state.terminal:
            # Also when a redelivered run finds the job ended: the run that ended it may have died
            # before this line. The callback task skips a callback already delivered.
            record = job_store().get(job_id)
            if record is not None and record.callback_url:
                deliver_callback.delay(job_id)
        if outcome.code is not None and outcome.state in _ENDED_BADLY:
            raise JobEnded(outcome.code, outcome.state.value, job_id)
    return {"job_id": job_id, "step": step_id, "next": outcome.action,
            "state": outcome.state.value if outcome.state else None}


def _late_by(eta: Any) -> float | None:
    """Seconds between a re-queued message's due time and now; None for a message that had none."""
    if not eta:
        return None
    try:
        due = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
    except ValueError:
        return None
    return time.time() - due.timestamp()


def _step_task(step_id: str) -> Task:
    def run_step(self: Task, job_id: str) -> dict[str, Any]:
        return _run(self, job_id, step_id)

    run_step.__name__ = run_step.__qualname__ = f"run_{step_id}"
    run_step.__doc__ = f"Run the workflow step {step_id!r} of one job."
    # `throws`: JobEnded is an expected outcome, reported as a failure without a traceback.
    task = app.task(name=TASK_PREFIX + step_id, bind=True, max_retries=None, throws=(JobEnded,))
    return task(run_step)


def register(workflow: Workflow) -> dict[str, Task]:
    """One task per step of `workflow`, by step id."""
    return {step.step_id: _step_task(step.step_id) for step in workflow.steps}


STEP_TASKS = register(withdrawal_workflow())


def workflow_chain(job_id: str) -> Signature:
    """The chain of step tasks in the document's order. Steps already recorded are skipped when they run."""
    return chain(*(STEP_TASKS[step.step_id].si(job_id) for step in withdrawal_workflow().steps))


@app.task(name=TASK_PREFIX + "sweep")
def sweep() -> list[str]:
    """Re-dispatch unfinished jobs that have not changed for STALL_AFTER seconds."""
    stalled = [record.job_id for record in job_store().stalled(config_settings.get().stall_after)]
    for job_id in stalled:
        workflow_chain(job_id).apply_async()
    return stalled
