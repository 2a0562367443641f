"""A payout run at the exchange's rate limit: exchange requests per withdrawal, and time against the limit.

    .venv/bin/python -m benchmarks.payout [--rows 500] [--rate 33] [--workers 1] [--out FILE]

One private stack with the production settings and the default worker; the sandbox confirms every
withdrawal at once and lists it at once (no lag), so the exchange's own time is nil and the run is
bound by the rate limit alone. A payout file of `--rows` rows is run with `bpx-worker batch submit`
(as a payout team runs it) and the harness reports:

- exchange requests per withdrawal, by route (the sandbox's counters before and after): the headline;
- the run's time, submit to the last result, against the least time the limit allows for the requests
  it made (requests / rate) and for the rows at one request each (rows / rate);
- the busiest second at the exchange (it must not pass the limit).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from benchmarks.bench import RESULTS, machine
from devtools.local import local_stack

SANDBOX_ARGS = ["--balances", "USDC=1000000000", "--history-lag", "0", "--confirm-delay", "0"]
ADDRESS = "7YttLkHDoNj9wyDur5pM1ejNaAvT9X4eqaYcHQqtj2G5"


def write_payouts(path: Path, rows: int, label: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "symbol", "blockchain", "address", "quantity"])
        for i in range(rows):
            writer.writerow([f"{label}-{i:05d}", "USDC", "Solana", ADDRESS, "1.5"])
    return path


def counters(url: str) -> dict[str, int]:
    return dict(requests.get(url + "/_sandbox/ledger", timeout=10).json()["requests"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rate", type=float, default=33.0, help="EXCHANGE_RATE_LIMIT, requests/s (Backpack: ~33)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (threads x 32 each)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=150)
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", "EXCHANGE_RATE_LIMIT": f"{args.rate:g}",
           "BATCH_TRACK_INTERVAL": "0.5"}
    label = time.strftime("%Y%m%d-%H%M%S")
    with local_stack(sandbox_args=SANDBOX_ARGS, worker_env=env, sandbox_state=False) as stack, \
            stack.activated(**env):
        for n in range(1, args.workers):
            stack.start_worker(f"w{n + 1}", None, **env)
        payouts = write_payouts(stack.directory / "payouts.csv", args.rows, label)
        before = counters(stack.sandbox_url)
        started = time.time()
        run = subprocess.run(  # noqa: S603 - argv built here from this interpreter
            [sys.executable, "-m", "bpx_worker.interfaces.cli", "batch", "submit", str(payouts)],
            env=stack.env(**env, COLUMNS="150"), capture_output=True, text=True, timeout=3600)
        seconds = time.time() - started
        if run.returncode != 0:
            console.print(run.stdout[-3000:], run.stderr[-3000:])
            return run.returncode
        results = payouts.with_name(payouts.name + ".results.csv")
        after = counters(stack.sandbox_url)
        routes = {route: after.get(route, 0) - before.get(route, 0) for route in after}
        routes = {route: count for route, count in routes.items() if count}
        total = sum(routes.values())
        report: dict[str, Any] = {
            "machine": machine(), "rows": args.rows, "rate_limit": args.rate, "workers": args.workers,
            "seconds": round(seconds, 2), "requests": total, "requests_per_withdrawal": round(total / args.rows, 3),
            "by_route": routes, "least_seconds_for_these_requests": round(total / args.rate, 2),
            "least_seconds_at_one_request_a_row": round(args.rows / args.rate, 2),
            "busiest_second": stack.busiest_second(started * 1000),
            "result_line": next((line for line in reversed(run.stdout.splitlines()) if "succeeded" in line), ""),
            "states": dict(Counter(row["state"] for row in csv.DictReader(results.open(newline="")))),
        }
    table = Table(title=f"payout run: {args.rows} rows at {args.rate:g} requests/s")
    for column in ("requests/withdrawal", "by route", "seconds", "least (these requests)", "least (1/row)",
                   "busiest second"):
        table.add_column(column)
    table.add_row(f"{report['requests_per_withdrawal']:.2f}", ", ".join(f"{k}: {v}" for k, v in routes.items()),
                  f"{report['seconds']:.1f}", f"{report['least_seconds_for_these_requests']:.1f}",
                  f"{report['least_seconds_at_one_request_a_row']:.1f}", str(report["busiest_second"]))
    console.print(table)
    console.print(report["result_line"], report["states"])
    out = args.out or RESULTS / f"{label}-payout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
