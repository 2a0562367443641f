"""`make run`: start a private stack, submit a few withdrawals and a payout file, show each one travel, shut down.

It ends with a one-line verdict per scenario.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from rich.console import Console

from bpx_worker.logs import hide_credentials
from devtools.local import local_stack

# Well-formed Solana addresses that nobody controls (the sandbox moves nothing).
PAYEE_1 = "8NuJorUSa8CVTaM6RsxhAthvLc3eYAmLEpHyzruE6ECN"
PAYEE_2 = "HYSyxUTe1mQZWhptuEHFSBVZPuGxG3jsTBj8hFiQdkkt"
BATCH_FILE = Path(__file__).resolve().parent.parent / "examples" / "payouts.csv"

SCENARIOS = [
    ("withdraws 25 USDC; the exchange records it only after a lag, so reconciliation polls",
     dict(symbol="USDC", blockchain="Solana", address=PAYEE_1, quantity="25")),
    ("asks for more SOL than the account holds: refused at the balance check, nothing sent",
     dict(symbol="SOL", blockchain="Solana", address=PAYEE_1, quantity="500")),
]


def run_demo(console: Console) -> int:
    sandbox_args = ["--balances", "USDC=1000,SOL=10", "--history-lag", "1.5", "--confirm-delay", "3"]
    with local_stack(sandbox_args=sandbox_args, redis_url=os.environ.get("REDIS_URL")) as stack, stack.activated():
        from bpx_worker.errors import IdempotencyConflict
        from bpx_worker.interfaces.api import get_job, submit_withdrawal
        from bpx_worker.interfaces.cli import follow, show

        console.print(f"redis {hide_credentials(stack.redis_url)}   sandbox {stack.sandbox_url}   worker started\n")
        outcomes = []
        for title, request in SCENARIOS:
            console.rule(title)
            job_id = submit_withdrawal(request["symbol"], request["blockchain"], request["address"],
                                       request["quantity"])
            console.print(f"submitted job {job_id}")
            outcomes.append(follow(job_id, console))
            show(get_job(job_id))

        console.rule("the same idempotency key submitted twice: one job, one withdrawal")
        key = f"payout-{uuid.uuid4().hex[:8]}"
        first = submit_withdrawal(symbol="USDC", blockchain="Solana", address=PAYEE_2, quantity="10",
                                  idempotency_key=key)
        second = submit_withdrawal(symbol="USDC", blockchain="Solana", address=PAYEE_2,
                                   quantity="10", idempotency_key=key)
        console.print(f"first submit  -> {first}\nsecond submit -> {second}  (same job: {first == second})")
        try:
            submit_withdrawal(symbol="USDC", blockchain="Solana", address=PAYEE_2, quantity="999",
                              idempotency_key=key)
            refused = False
        except IdempotencyConflict as exc:
            console.print(f"the same key for 999 USDC -> refused: {exc}")
            refused = True
        outcomes.append(follow(first, console))

        console.rule(f"a payout file as a batch: {BATCH_FILE.name}, then the same file again")
        batch_codes = run_batch(console, stack.directory)

        import requests

        ledger = requests.get(stack.sandbox_url + "/_sandbox/ledger", timeout=5).json()
        console.rule("sandbox ledger")
        for w in ledger["withdrawals"]:
            console.print(f"  #{w['id']} {w['quantity']} {w['symbol']} -> {w['toAddress']} "
                          f"clientId={w['clientId']} status={w['status']}")
        console.print(f"  balances {ledger['balances']}")
    titles = [title for title, _ in SCENARIOS] + ["the same idempotency key twice (and refused for another request)",
                                                  "a batch from a payout file", "the same payout file again"]
    expected = [0, 1, 0, 0, 0]  # succeeded, failed, succeeded; the batch's rows all succeeded, twice
    got = [*outcomes, *batch_codes]
    got[2] = got[2] if first == second and refused else -1
    names = {0: "succeeded", 1: "failed", 3: "needs review", 6: "refused", -1: "idempotency not kept"}
    console.rule("verdicts")
    for title, want, have in zip(titles, expected, got, strict=True):
        mark = "[green]as expected[/green]" if want == have else "[red]NOT as expected[/red]"
        console.print(f"  {mark}: {title}: {names.get(have, have)} (expected {names[want]})")
    return 0 if got == expected else 1


def run_batch(console: Console, directory: Path) -> list[int]:
    """Submit the example payout file as the CLI does, follow it with its progress bar, then submit it again."""
    from bpx_worker.batches.payout_file import parse_payout_file
    from bpx_worker.interfaces.batch_cli import follow as follow_batch
    from bpx_worker.interfaces.batch_cli import read_balances_through_worker
    from bpx_worker.tasks.batches import batch_runner

    runner = batch_runner()
    codes = []
    for attempt in ("first", "again"):
        payout_file = parse_payout_file(BATCH_FILE.name, BATCH_FILE.read_bytes())
        submitted = runner.submit(runner.plan(payout_file, "demo"), read_balances_through_worker)
        console.print(f"{attempt}: {len(payout_file.rows)} rows, batch {submitted.batch_id} {submitted.outcome.value}")
        codes.append(follow_batch(submitted.batch_id or "", directory / f"{attempt}.results.csv", console))
    console.print((directory / "first.results.csv").read_text())
    return codes


def main() -> int:
    """`make run`: a private stack and a few withdrawals, shown step by step."""
    from bpx_worker import logs

    logs.configure("WARNING")
    return run_demo(Console(highlight=False, soft_wrap=True))  # lines are never broken mid-word


if __name__ == "__main__":
    raise SystemExit(main())
