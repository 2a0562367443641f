"""Thousands of withdrawals pending at the exchange: memory, request rate, and fresh jobs' latency.

    .venv/bin/python -m benchmarks.pending --pending 1000,3000 [--window 60] [--out FILE]

A long run, by hand (not part of make bench-quick). One private stack with the production settings and
the default worker; the sandbox holds every withdrawal `pending` (--hold-status pending), so every job
keeps polling. For each level the harness tops the number of polling jobs up to the level, waits until
all of them have sent their withdrawal and their poll intervals have reached the cap, then for
`--window` seconds submits one fresh job per second and measures:

- the worker's resident memory (the process tree, psutil) and Redis's used memory (INFO memory);
- requests per second at the exchange (the sandbox's counters over the window) and the polls waiting in
  the schedule;
- each fresh job's submit-to-withdrawal-request time (submit to the end of its requestWithdrawal step,
  whose answer the sandbox returned at once).

An idle system is measured first the same way (level 0): fresh jobs' latency there is the reference.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import requests
from rich.console import Console
from rich.table import Table

from benchmarks.bench import RESULTS, RssSampler, machine, percentile
from devtools.local import local_stack, wait_until

INPUTS = {"symbol": "USDC", "blockchain": "Solana", "address": "7YttLkHDoNj9wyDur5pM1ejNaAvT9X4eqaYcHQqtj2G5",
          "quantity": "1"}
SANDBOX_ARGS = ["--balances", "USDC=1000000000", "--history-lag", "0", "--confirm-delay", "0",
                "--hold-status", "pending"]
# The shared rate limit toward the exchange is Backpack's own by default (about 2,000 requests a minute per
# subaccount, notes/backpack-api.md section 3): the polls of thousands of pending withdrawals must fit in it,
# and fresh withdrawals go first when it binds. `--rate 100000` measures the worker without the limit.
# Topping 10,000 up at that limit takes five minutes: the pending ones keep polling for the whole run
# (RECONCILE_DEADLINE, 900 s by default, would end the first ones `needs_review` before the last level).
WORKER_ENV = {"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", "RECONCILE_DEADLINE": "7200"}
REQUEST = "requestWithdrawal"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", default="1000,3000", help="levels of pending withdrawals, ascending")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured at each level")
    parser.add_argument("--settle", type=float, default=70.0,
                        help="seconds after the last withdrawal request before measuring (polls reach the cap)")
    parser.add_argument("--pool", default=None, help="worker pool (default: the worker's default)")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--rate", type=float, default=33.0, help="EXCHANGE_RATE_LIMIT, requests/s (Backpack: ~33)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    env = {**WORKER_ENV, "EXCHANGE_RATE_LIMIT": f"{args.rate:g}"}
    levels = [0, *(int(v) for v in args.pending.split(","))]
    console = Console(highlight=False, width=170)
    rows: list[dict[str, Any]] = []
    with local_stack(sandbox_args=SANDBOX_ARGS, start_worker=False, sandbox_state=False) as stack, \
            stack.activated(**env):
        from bpx_worker import logs
        from bpx_worker.interfaces.api import submit_withdrawal
        from bpx_worker.jobs.schedule import PollSchedule
        from bpx_worker.tasks.app import job_store

        logs.configure("WARNING")
        store = job_store()
        schedule = PollSchedule(store.redis)
        server = redis.Redis.from_url(stack.redis_url)
        worker = stack.start_worker("pending", args.concurrency, pool=args.pool, **env)
        sampler = RssSampler(worker.pid)
        sampler.start()

        def ledger() -> dict[str, Any]:
            return requests.get(stack.sandbox_url + "/_sandbox/ledger", timeout=60).json()

        def submit() -> str:
            return submit_withdrawal(INPUTS["symbol"], INPUTS["blockchain"], INPUTS["address"], INPUTS["quantity"],
                                     idempotency_key=f"pending-{uuid.uuid4().hex}")

        def sent(job_id: str) -> bool:
            record = store.get(job_id)
            return record is not None and REQUEST in record.steps and record.steps[REQUEST].ended_at is not None

        # One job first, so the idle reference does not include the worker's start.
        first = submit()
        wait_until(lambda: sent(first), 120, "the first job's withdrawal request", interval=0.2)
        submitted: list[str] = [first]
        for level in levels:
            while len(submitted) < level + 1:
                submitted.append(submit())
            if level:
                wait_until(lambda n=level: len(ledger()["withdrawals"]) >= n, 1800, f"{level} withdrawals",
                           interval=2)
                time.sleep(args.settle)  # the polls' intervals grow to RECONCILE_MAX_DELAY
            sampler.peak = 0
            before, began = ledger()["requests"], time.time()
            fresh = []
            for i in range(int(args.window)):
                due = began + i
                time.sleep(max(0.0, due - time.time()))
                fresh.append((submit(), time.time()))
            time.sleep(max(0.0, began + args.window - time.time()))
            elapsed = time.time() - began
            after = ledger()["requests"]
            rate = (sum(after.values()) - sum(before.values())) / elapsed
            polls_rate = (after.get("GET /wapi/v1/capital/withdrawals", 0)
                          - before.get("GET /wapi/v1/capital/withdrawals", 0)) / elapsed

            def all_sent(probes: list[tuple[str, float]] = fresh) -> bool:
                return all(sent(j) for j, _ in probes)

            wait_until(all_sent, 600, "the fresh jobs' withdrawal requests", interval=1)
            latencies = [(store.require(j).steps[REQUEST].ended_at or at) * 1000 - at * 1000 for j, at in fresh]
            submitted += [j for j, _ in fresh]
            memory = server.info("memory")
            row = {
                "pending": level, "jobs_polling": len(submitted), "window_s": round(elapsed, 1),
                "worker_rss_mb": round(sampler.peak / 2**20, 1),
                "redis_used_memory_mb": round(memory["used_memory"] / 2**20, 1),
                "exchange_requests_per_s": round(rate, 1), "history_reads_per_s": round(polls_rate, 1),
                "busiest_second": stack.busiest_second(began * 1000), "rate_limit": args.rate,
                "polls_waiting": schedule.waiting(),
                "fresh_p50_ms": round(percentile(latencies, 50), 1),
                "fresh_p99_ms": round(percentile(latencies, 99), 1),
                "fresh_max_ms": round(max(latencies), 1), "fresh_latencies_ms": latencies,
            }
            rows.append(row)
            console.print({k: v for k, v in row.items() if k != "fresh_latencies_ms"})
        sampler.stop()
    table = Table(title="Withdrawals pending at the exchange (sandbox --hold-status pending), default worker")
    for column in ("pending", "worker RSS MB", "Redis used MB", "exchange req/s", "busiest second",
                   "polls waiting", "fresh p50 ms", "fresh p99 ms"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["pending"]), f"{r['worker_rss_mb']:.0f}", f"{r['redis_used_memory_mb']:.1f}",
                      f"{r['exchange_requests_per_s']:.1f}", str(r["busiest_second"]), str(r["polls_waiting"]),
                      f"{r['fresh_p50_ms']:.0f}",
                      f"{r['fresh_p99_ms']:.0f}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-pending.json"
    out.write_text(json.dumps({"label": "pending", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "options": vars(args) | {"out": str(out)}, "machine": machine(), "rows": rows},
                              indent=1, default=str))
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
