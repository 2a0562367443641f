"""Benchmarks: document loading, the in-process run (the baseline) and the Celery path.

    .venv/bin/python benchmarks/bench_workflow.py [JOBS]

Starts its own private stack; prints seconds per operation. Not part of `make test`.
"""

from __future__ import annotations

import sys
import time
import uuid

from bpx_worker import logs
from bpx_worker.arazzo.workflow import load_workflow
from bpx_worker.config import settings
from bpx_worker.config.documents import SEED_WORKFLOW, WORKER_ADDITIONS, load_yaml
from devtools.local import local_stack

# A well-formed Solana address nobody controls (the sandbox records it and moves nothing).
BENCH_ADDRESS = "AEFko6Kq4Gh9F6AWQfnvRtqadzoPP73VjkgQFZLnXyAR"


def timed(label: str, runs: int, action) -> None:
    started = time.perf_counter()
    for _ in range(runs):
        action()
    elapsed = time.perf_counter() - started
    print(f"{label:<45} {elapsed / runs * 1000:9.2f} ms/op  ({runs} runs)")


def main(jobs: int = 50) -> None:
    logs.configure("WARNING")
    def cold_load():
        load_yaml.cache_clear()
        load_workflow(SEED_WORKFLOW, WORKER_ADDITIONS)

    timed("load seed + OpenAPI + additions (cold)", 10, cold_load)
    args = ["--balances", "USDC=100000000", "--history-lag", "0", "--confirm-delay", "0"]
    env = {"RECONCILE_INITIAL_DELAY": "0.05", "RECONCILE_MAX_DELAY": "0.5", "LOG_LEVEL": "WARNING"}
    with local_stack(sandbox_args=args, worker_env=env) as stack, stack.activated(**env):
        from bpx_worker.interfaces.api import submit_withdrawal, wait_for
        from bpx_worker.withdrawal.runtime import run_withdrawal_inprocess

        inputs = {"symbol": "USDC", "blockchain": "Solana", "address": BENCH_ADDRESS, "quantity": "1"}
        timed("in-process workflow run (3 steps)", jobs,
              lambda: run_withdrawal_inprocess(settings.get(), inputs, uuid.uuid4().hex))
        started = time.perf_counter()
        ids = [submit_withdrawal(inputs["symbol"], inputs["blockchain"], inputs["address"], inputs["quantity"])
               for _ in range(jobs)]
        for job_id in ids:
            wait_for(job_id, timeout=300)
        elapsed = time.perf_counter() - started
        print(f"{'Celery path, submit to succeeded (throughput)':<45} {elapsed / jobs * 1000:9.2f} ms/job "
              f"({jobs} jobs, 1 worker x 2 processes)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
