"""`bpx-worker run-inprocess` validates like `submit`, against the sandbox over HTTP (no Celery, no Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from bpx_worker.withdrawal import rules
from tests.addresses import solana_address
from tests.integration.test_edge_and_secrets import _ledger_counts

ROOT = Path(__file__).resolve().parents[2]


def _run(stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bpx_worker.interfaces.cli", "run-inprocess", *args],
        env=stack.env(**env), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(("quantity", "reason"), [
    ("-1", "quantity: must be greater than zero, written without a sign"),
    ("0", "quantity: must be greater than zero"),
    ("1e2", "quantity: must not use exponent notation"),
    ("abc", "quantity: must be plain digits with at most one '.'"),
])
def test_bad_quantities_exit_2_before_any_request(stack, sandbox, quantity, reason):
    before = _ledger_counts(sandbox)
    result = _run(stack, "--symbol", "USDC", "--blockchain", "Solana", "--address", solana_address(),
                  "--quantity", quantity)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert reason in [line.strip() for line in result.stderr.splitlines()]
    assert "Traceback" not in result.stderr
    assert _ledger_counts(sandbox) == before  # not even the balance request


def test_the_same_limits_and_address_rules_as_submit_apply(stack, sandbox):
    before = _ledger_counts(sandbox)
    evm_address = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    result = _run(stack, "--symbol", "USDC", "--blockchain", "Solana", "--address", evm_address,
                  "--quantity", "50", "--window", "0", MAX_QUANTITY="USDC=10")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert any(line.startswith("address: not a valid Solana address") for line in lines), lines
    assert "window: must be between 1 and 60000 ms" in lines
    result = _run(stack, "--symbol", "USDC", "--blockchain", "Solana", "--address", solana_address(),
                  "--quantity", "50", MAX_QUANTITY="USDC=10")
    assert result.returncode == 2
    assert "quantity: exceeds the per-job limit of 10 USDC" in [line.strip() for line in result.stderr.splitlines()]
    assert _ledger_counts(sandbox) == before


def test_a_run_prints_only_json_on_stdout_and_logs_on_stderr(stack, sandbox):
    key, address = f"inproc-{uuid.uuid4().hex[:10]}", solana_address()
    result = _run(stack, "--symbol", "USDC", "--blockchain", "Solana", "--address", address, "--quantity", "2.50",
                  "--idempotency-key", key, "--window", "6000", "--two-factor-token", "123456", LOG_LEVEL="DEBUG")
    assert result.returncode == 0, (result.stdout, result.stderr)
    answer = json.loads(result.stdout)  # nothing but the JSON result
    assert answer["state"] == "succeeded" and answer["error"] is None
    assert answer["outputs"]["status"] == "confirmed"
    assert result.stderr.strip() != ""  # the logs went to stderr
    assert "123456" not in result.stdout + result.stderr
    mine = sandbox.withdrawals(rules.client_id(key))
    assert [(w["toAddress"], Decimal(w["quantity"]), w["twoFactorTokenProvided"]) for w in mine] == [
        (address, Decimal("2.5"), True)]
