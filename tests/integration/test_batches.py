"""Batch payout runs against real servers: a private Redis, two worker processes, beats on RedBeat, the sandbox.

The CLI runs as a subprocess, as a payout team would run it. The scenarios run in
order on one stack and count what the sandbox's ledger holds after each.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from devtools.local import local_stack, wait_until
from tests.integration.conftest import WORKER_ENV, Sandbox

pytestmark = pytest.mark.timeout(400)

RATE = 40  # EXCHANGE_RATE_LIMIT of the stack: requests per second, all worker processes together
ENV = {
    **WORKER_ENV,
    "RECONCILE_INITIAL_DELAY": "0.3",
    "BATCH_TRACK_INTERVAL": "0.5",
    "BATCH_SUBMIT_STALL": "5",
    "EXCHANGE_RATE_LIMIT": str(RATE),
    "EXCHANGE_RATE_MAX_WAIT": "1",
    "SWEEP_INTERVAL": "2",
    "BEAT_MAX_INTERVAL": "1",
    "LOG_LEVEL": "INFO",
}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def solana_address(seed: str) -> str:
    """A valid Solana address (32 bytes in base58) that nobody controls."""
    raw = hashlib.sha256(seed.encode()).digest()
    number, text = int.from_bytes(raw, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        text = _B58[digit] + text
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + text


def payout_rows(prefix: str, count: int, symbol: str = "USDC", quantity: str = "1.5") -> list[dict[str, str]]:
    return [{"key": f"{prefix}-{i:04d}", "symbol": symbol, "blockchain": "Solana",
             "address": solana_address(f"{prefix}-{i}"), "quantity": quantity} for i in range(count)]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["key", "symbol", "blockchain", "address", "quantity"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory: pytest.TempPathFactory):
    inbox = tmp_path_factory.mktemp("inbox")
    env = {**ENV, "PAYOUT_SCHEDULES": json.dumps([{"name": "nightly", "inbox": str(inbox), "every": 1}])}
    args = ["--balances", "USDC=1000000,SOL=50", "--history-lag", "0", "--confirm-delay", "0"]
    # Always a Redis of its own: its workers, beats and limiter must not share a Redis with the session's stack.
    with local_stack(sandbox_args=args, worker_env=env) as stack, \
            stack.activated(**env):
        stack.start_worker("w2", 2, **env)  # a second worker: the rate limit is shared across machines' processes
        yield stack, env, inbox


@pytest.fixture
def ledger(batch_stack) -> Sandbox:
    stack, _, _ = batch_stack
    return Sandbox(stack.sandbox_url)


def cli(batch_stack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    stack, env, _ = batch_stack
    return subprocess.run([sys.executable, "-m", "bpx_worker.interfaces.cli", "batch", *args],
                          env=stack.env(**env, COLUMNS="200"), capture_output=True, text=True, timeout=timeout)


def paid_client_ids(sandbox: Sandbox) -> Counter[str]:
    return Counter(w["clientId"] for w in sandbox.withdrawals())


def batch_store():
    from bpx_worker.tasks.batches import batch_store as store

    return store()


# --- the scenarios, in order --------------------------------------------------------------------


def test_a_batch_over_the_balance_is_refused_after_its_dry_run_and_sends_nothing(batch_stack, ledger, tmp_path):
    ledger.balances(USDC="100", SOL="50")
    before = len(ledger.withdrawals())
    payouts = write_csv(tmp_path / "over.csv", payout_rows("over", 4, quantity="30"))  # 120 USDC

    dry = cli(batch_stack, "submit", "--dry-run", str(payouts))
    assert dry.returncode == 6, dry.stdout + dry.stderr
    assert "USDC    120     100" in dry.stdout and "does not fit" in dry.stdout
    assert "nothing was submitted" in dry.stdout

    refused = cli(batch_stack, "submit", str(payouts))
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "refused: the batch needs more than is available; nothing was sent" in refused.stdout
    assert len(ledger.withdrawals()) == before


def test_two_batches_that_each_fit_cannot_together_overdraw(batch_stack, ledger, tmp_path):
    ledger.balances(USDC="100", SOL="50")
    before = len(ledger.withdrawals())
    first = write_csv(tmp_path / "first.csv", payout_rows("first", 3, quantity="20"))  # 60 USDC
    second = write_csv(tmp_path / "second.csv", payout_rows("second", 3, quantity="20"))  # 60 USDC

    accepted = cli(batch_stack, "submit", "--no-wait", str(first))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # The first batch's 60 are held until its rows end, whatever the balance read says meanwhile.
    refused = cli(batch_stack, "submit", str(second))
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "held by other batches" in refused.stdout

    batch_id = accepted.stdout.split("batch ")[1].split()[0]
    done = cli(batch_stack, "status", "--follow", batch_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(ledger.withdrawals()) == before + 3
    assert batch_store().reserved(["USDC"]) == {"USDC": 0}  # released once its rows ended


def test_a_500_row_batch_runs_to_the_end_within_the_shared_rate_limit(batch_stack, ledger, tmp_path):
    stack, _, _ = batch_stack
    ledger.balances(USDC="1000000", SOL="50")
    before = paid_client_ids(ledger)
    payouts = write_csv(tmp_path / "june.csv", payout_rows("june", 500))
    waits_before = _limiter_waits()
    started_ms = time.time() * 1000

    run = cli(batch_stack, "submit", str(payouts))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "500/500 ended" in run.stdout or "500/500" in run.stdout  # the progress bar's last frame
    assert "succeeded 500" in run.stdout
    results = read_results(tmp_path / "june.csv.results.csv")
    assert len(results) == 500
    assert {r["state"] for r in results} == {"succeeded"}
    assert all(r["withdrawal_id"] and r["job_id"] for r in results)
    assert [r["row_key"] for r in results] == [f"june-{i:04d}" for i in range(500)]
    paid = paid_client_ids(ledger) - before
    assert len(paid) == 500 and set(paid.values()) == {1}  # one withdrawal per row, none twice
    # The limiter bound (processes waited for their slots) and no second saw more than the limit. A window can
    # catch one request more at its edge, and a process that woke late one more.
    assert _limiter_waits() > waits_before
    assert stack.busiest_second(started_ms) <= RATE + 2


def test_the_same_file_again_pays_nothing_new(batch_stack, ledger, tmp_path):
    payouts = write_csv(tmp_path / "june.csv", payout_rows("june", 500))  # the same bytes as before
    before = paid_client_ids(ledger)

    again = cli(batch_stack, "submit", str(payouts))

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "was accepted before as batch" in again.stdout
    assert paid_client_ids(ledger) == before
    assert len(read_results(tmp_path / "june.csv.results.csv")) == 500


def test_an_edited_file_pays_only_its_new_rows_and_refuses_a_changed_one(batch_stack, ledger, tmp_path):
    rows = payout_rows("june", 500)
    rows.reverse()  # re-exported in another order
    rows[10] = {**rows[10], "quantity": "2"}  # a key already paid, now with another amount
    changed_key = rows[10]["key"]
    rows += payout_rows("july", 3)  # three new payouts
    edited = write_csv(tmp_path / "june-edited.csv", rows)
    before = paid_client_ids(ledger)

    refused = cli(batch_stack, "submit", str(edited))
    assert refused.returncode == 5, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"key '{changed_key}' paid a different payout before" in refused.stdout
    assert "quantity 1.5 -> 2" in refused.stdout
    assert paid_client_ids(ledger) == before

    run = cli(batch_stack, "submit", "--skip-invalid", str(edited))
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # not every row succeeded: one refused
    results = {r["row_key"]: r for r in read_results(tmp_path / "june-edited.csv.results.csv")}
    assert results[changed_key]["state"] == "refused"
    assert {results[f"july-{i:04d}"]["state"] for i in range(3)} == {"succeeded"}
    unchanged = results["june-0000"]
    assert unchanged["state"] == "succeeded" and "already paid by batch" in unchanged["detail"]
    paid = paid_client_ids(ledger) - before
    assert len(paid) == 3 and set(paid.values()) == {1}


def test_a_submitter_killed_mid_batch_is_resumed_without_paying_twice(batch_stack, ledger, tmp_path):
    stack, env, _ = batch_stack
    payouts = write_csv(tmp_path / "crash.csv", payout_rows("crash", 120))
    before = paid_client_ids(ledger)
    process = subprocess.Popen([sys.executable, "-m", "bpx_worker.interfaces.cli", "batch", "submit", str(payouts)],
                               env=stack.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = batch_store()

    def submitting_with_rows_done() -> str | None:
        for head in store.recent(5):
            if head.source == "crash.csv" and head.state.value == "submitting":
                done = sum(1 for row in store.rows(head.batch_id) if row.status.value == "submitted")
                if done >= 10:
                    return head.batch_id
        return None

    batch_id = wait_until(submitting_with_rows_done, 60, "the submitter to be half-way", interval=0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    pending = [row for row in store.rows(batch_id) if row.status.value == "pending"]
    assert pending, "the kill landed after the submission ended; the scenario did not test a crash"

    resumed = cli(batch_stack, "submit", str(payouts))

    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"accepted before as batch {batch_id}" in resumed.stdout
    paid = paid_client_ids(ledger) - before
    assert len(paid) == 120 and set(paid.values()) == {1}
    assert {r["state"] for r in read_results(tmp_path / "crash.csv.results.csv")} == {"succeeded"}


def test_two_beats_racing_on_one_inbox_run_each_file_once(batch_stack, ledger, tmp_path):
    stack, env, inbox = batch_stack
    before = paid_client_ids(ledger)
    # Files are written elsewhere and renamed in, as the inbox asks.
    for name, rows in (("night-a.csv", payout_rows("night-a", 20)), ("night-b.csv", payout_rows("night-b", 15))):
        staged = write_csv(tmp_path / name, rows)
        os.rename(staged, inbox / name)
    (inbox / "night-a-copy.csv").write_bytes((inbox / "night-a.csv").read_bytes())  # the same file twice
    (inbox / "broken.csv").write_text("key,symbol,blockchain,address,quantity,two_factor_token\n")

    stack.start_beat("beat-1", **env)
    stack.start_beat("beat-2", **env)

    processed = inbox / "processed"
    reports = [processed / f"{name}.results.csv" for name in ("night-a.csv", "night-a-copy.csv", "night-b.csv")]
    wait_until(lambda: all(report.exists() for report in reports), 120, "the three reports")
    wait_until(lambda: (inbox / "rejected" / "broken.csv.rejected.txt").exists(), 30, "the rejection note")
    assert sorted(p.name for p in processed.iterdir() if not p.name.endswith(".csv.results.csv")) == \
        ["night-a-copy.csv", "night-a.csv", "night-b.csv"]
    assert "two_factor_token: not allowed" in (inbox / "rejected" / "broken.csv.rejected.txt").read_text()
    assert not list(inbox.glob("*.csv")) and not list((inbox / "processing").iterdir())
    results = read_results(processed / "night-a.csv.results.csv")
    assert len(results) == 20 and {r["state"] for r in results} == {"succeeded"}
    assert read_results(processed / "night-a-copy.csv.results.csv") == results  # one batch for the same bytes
    paid = paid_client_ids(ledger) - before
    assert len(paid) == 35 and set(paid.values()) == {1}
    # RedBeat: one beat holds the lock and sends; the other waits for it.
    logs = [(stack.directory / f"beat-{n}.log").read_text() for n in (1, 2)]
    assert sum("beat: Acquired lock" in log for log in logs) == 1
    assert any("Sending due task sweep-stalled-jobs" in log for log in logs)  # the sweep runs on RedBeat too
    stack.stop_worker("beat-1")
    stack.stop_worker("beat-2")


def _limiter_waits() -> int:
    from bpx_worker.tasks.app import rate_limiter

    return rate_limiter().waits()
