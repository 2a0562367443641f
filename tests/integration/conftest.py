"""A real stack for the integration tests: private Redis, the sandbox over HTTP, a Celery worker process."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from devtools.local import Stack, local_stack

# Short delays so the suite runs in seconds; each is a setting, not a constant.
WORKER_ENV = {
    "RETRY_INITIAL_DELAY": "0.2",
    "RETRY_MAX_DELAY": "1",
    "RETRY_MAX_ATTEMPTS": "8",
    "RECONCILE_INITIAL_DELAY": "0.2",
    "RECONCILE_BACKOFF_FACTOR": "1.5",
    "RECONCILE_MAX_DELAY": "1",
    "RECONCILE_DEADLINE": "6",
    "LOOKUP_DEADLINE": "4",
    "HTTP_READ_TIMEOUT": "2",
    "LEASE_TTL": "15",
    "VISIBILITY_TIMEOUT": "30",
    "LOG_LEVEL": "INFO",
}
BALANCES = "USDC=1000000,SOL=50"


class Sandbox:
    """The admin side of the sandbox, for arranging and counting."""

    def __init__(self, url: str):
        self.url = url

    def ledger(self) -> dict:
        return requests.get(self.url + "/_sandbox/ledger", timeout=5).json()

    def withdrawals(self, client_id: str | None = None) -> list[dict]:
        items = self.ledger()["withdrawals"]
        return [w for w in items if client_id is None or w["clientId"] == client_id]

    def configure(self, **values) -> None:
        requests.post(self.url + "/_sandbox/config", json=values, timeout=5).raise_for_status()

    def faults(self, **values) -> None:
        requests.post(self.url + "/_sandbox/faults", json=values, timeout=5).raise_for_status()

    def reset_faults_and_config(self) -> None:
        self.faults(p_5xx=0, p_429=0, latency_ms=0, p_drop=0, p_commit_then_drop=0, hang_ms=0, only_withdrawals=False)
        self.configure(history_lag=0.3, confirm_delay=0.5, hold_status=None, reject_code=None, withdraw_status=200,
                       ignore_filters=False, redirect_to=None)

    def balances(self, **values: str) -> None:
        requests.post(self.url + "/_sandbox/balances", json=values, timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    args = ["--balances", BALANCES, "--history-lag", "0.3", "--confirm-delay", "0.5"]
    # A Redis given by REDIS_URL is used as it is; otherwise a private one is started.
    with local_stack(sandbox_args=args, worker_env=WORKER_ENV, redis_url=os.environ.get("REDIS_URL")) as running, \
            running.activated(**WORKER_ENV):
        yield running


@pytest.fixture
def sandbox(stack: Stack) -> Iterator[Sandbox]:
    admin = Sandbox(stack.sandbox_url)
    admin.reset_faults_and_config()
    yield admin
    admin.reset_faults_and_config()


@pytest.fixture
def store(stack: Stack):
    from bpx_worker.tasks.app import job_store

    return job_store()
