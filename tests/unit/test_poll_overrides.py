"""The polled step's pace comes from the document; RECONCILE_* settings override it visibly."""

from __future__ import annotations

from bpx_worker.arazzo import withdrawal_workflow
from bpx_worker.config.settings import Settings
from bpx_worker.withdrawal.runtime import with_settings


def _reconcile(workflow):
    return workflow.step("reconcileWithdrawal").retry_actions[0]


def test_without_settings_the_documents_retry_after_and_limit_apply():
    # Explicit values win over the environment, which a stack fixture may have set in this process.
    workflow = with_settings(withdrawal_workflow(), Settings(reconcile_initial_delay=None, reconcile_retry_limit=None))
    action = _reconcile(workflow)
    assert (action.effective_retry_after, action.effective_retry_limit) == (action.retry_after, action.retry_limit)
    assert workflow.retry_overrides() == []


def test_a_setting_overrides_the_document_and_the_loaded_workflow_shows_it():
    workflow = with_settings(withdrawal_workflow(), Settings(reconcile_initial_delay=0.2, reconcile_retry_limit=7))
    action = _reconcile(workflow)
    assert (action.effective_retry_after, action.effective_retry_limit) == (0.2, 7)
    assert (action.retry_after, action.retry_limit) == (1.0, 1000)  # the document's values are kept
    [(step_id, _, override)] = workflow.retry_overrides()
    assert step_id == "reconcileWithdrawal"
    assert override.source == "RECONCILE_INITIAL_DELAY, RECONCILE_RETRY_LIMIT"
