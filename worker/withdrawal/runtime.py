"""The withdrawal workflow wired for running: the engine built from settings, and the in-process run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bpx_worker.arazzo import Workflow, seed_workflow, withdrawal_workflow
from bpx_worker.config.settings import Settings
from bpx_worker.engine.backoff import Backoff
from bpx_worker.engine.engine import Exchange, SendGate, SharedPolls, StepEngine, Timing
from bpx_worker.engine.inprocess import run_inprocess
from bpx_worker.exchange.client import BackpackClient
from bpx_worker.exchange.shared import SharedReads
from bpx_worker.exchange.signer import Signer
from bpx_worker.jobs.base import JobStore
from bpx_worker.jobs.record import JobRecord
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.withdrawal.rules import client_id, workflow_rules


def timing(settings: Settings) -> Timing:
    return Timing(
        retry=Backoff(settings.retry_initial_delay, settings.retry_backoff_factor, settings.retry_max_delay,
                      settings.retry_max_attempts, settings.retry_jitter),
        poll_factor=settings.reconcile_backoff_factor,
        poll_max_delay=settings.reconcile_max_delay,
        poll_deadline=settings.reconcile_deadline,
        lookup_deadline=settings.lookup_deadline,
        lease_ttl=settings.lease_ttl,
        # A held step touches its record well within STALL_AFTER: the sweep must not re-dispatch it.
        hold_heartbeat=settings.stall_after / 3,
        send_budget=settings.http_connect_timeout + settings.http_read_timeout,
    )


def with_settings(workflow: Workflow, settings: Settings) -> Workflow:
    """The workflow with the RECONCILE_* overrides of its polled steps' retry actions, recorded on it."""
    if settings.reconcile_initial_delay is None and settings.reconcile_retry_limit is None:
        return workflow
    source = ", ".join(name for name, value in (("RECONCILE_INITIAL_DELAY", settings.reconcile_initial_delay),
                                                ("RECONCILE_RETRY_LIMIT", settings.reconcile_retry_limit))
                       if value is not None)
    for step in workflow.steps:
        if step.retry_actions:
            workflow = workflow.with_retry_override(step.step_id, source=source,
                                                    retry_after=settings.reconcile_initial_delay,
                                                    retry_limit=settings.reconcile_retry_limit)
    return workflow


def build_engine(settings: Settings, store: JobStore, client: Exchange, signer: Signer | None,
                 workflow: Workflow | None = None, gate: SendGate | None = None) -> StepEngine:
    """The engine for the withdrawal workflow with this worker's limits and clocks.

    Over the Redis job store, the kill switch (`bpx-worker pause`) gates every new withdrawal request
    unless another `gate` is given, and reads are shared; the in-process run (a memory store, one
    process) has neither.
    """
    workflow = with_settings(workflow or withdrawal_workflow(), settings)
    rules = workflow_rules(settings.max_quantity, settings.allowed_destinations)
    shared_polls = None
    if isinstance(store, RedisJobStore):
        # Reads that many jobs share: the balance read within a freshness window, and the polls of
        # pending withdrawals, many per read of the history (`StepEngine.run_polls`).
        if gate is None:
            gate = store.send_hold
        if settings.shared_read_seconds > 0 and signer is not None:
            account_reads = {(s.operation.method, s.operation.path) for s in workflow.steps
                             if s.operation.operation_id in rules.account_reads}
            client = SharedReads(client, store.redis, account_reads, settings.shared_read_seconds, signer.api_key)
        shared_polls = SharedPolls()
    return StepEngine(
        store, client, workflow, rules, timing(settings),
        open_sealed=signer.open_sealed if signer is not None else None,
        gate=gate, shared_polls=shared_polls,
    )


def run_withdrawal_inprocess(settings: Settings, inputs: Mapping[str, Any], idempotency_key: str, *,
                             seed_only: bool = False, sealed_2fa: bytes | None = None) -> JobRecord:
    """Run the withdrawal workflow in this process with the configured keys and exchange."""
    signer = Signer.from_secret(settings.api_key(), settings.api_secret())
    client = BackpackClient.from_settings(settings, signer)
    workflow = seed_workflow() if seed_only else withdrawal_workflow()
    cid = client_id(idempotency_key)
    try:
        return run_inprocess(lambda store: build_engine(settings, store, client, signer, workflow),
                             idempotency_key, cid, {**inputs, "clientId": cid}, sealed_2fa)
    finally:
        client.close()
