"""Profile the worker's hot path: a solo-pool worker under pyinstrument runs N jobs on a private stack.

    .venv/bin/python -m benchmarks.profile [--jobs 300] [--out benchmarks/results/profile.txt]

The solo pool runs every task in the worker's main thread, the thread pyinstrument samples, so the
profile holds Celery's own work (receiving, acking, publishing the next link) and the step engine's.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.bench import INPUTS, RESULTS, WORKER_ENV, bench_stack
from devtools.local import wait_until


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.txt")
    parser.add_argument("--cprofile", action="store_true", help="cProfile (a .prof file beside --out) instead")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with bench_stack(0) as stack:
        from bpx_worker.interfaces.api import submit_withdrawal
        from bpx_worker.jobs.store import ACTIVE_INDEX
        from bpx_worker.tasks.app import job_store

        ids = [submit_withdrawal(INPUTS["symbol"], INPUTS["blockchain"], INPUTS["address"], INPUTS["quantity"],
                                 idempotency_key=f"profile-{uuid.uuid4().hex}") for _ in range(args.jobs)]
        log = open(stack.directory / "profiled-worker.log", "ab")  # noqa: SIM115 - the worker holds it
        worker = subprocess.Popen(  # noqa: S603 - argv built here from this interpreter
            [sys.executable, *(["-m", "cProfile", "-o", str(args.out.with_suffix(".prof"))] if args.cprofile else
               ["-m", "pyinstrument", "--renderer", "text", "--outfile", str(args.out)]),
             "-m", "celery", "-A", "bpx_worker.tasks.app", "worker", "--pool", "solo", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=stack.env(**WORKER_ENV), stdout=log, stderr=subprocess.STDOUT,
        )
        started = time.time()
        redis = job_store().redis
        wait_until(lambda: redis.zcard(ACTIVE_INDEX) == 0, 600, f"{len(ids)} jobs", interval=0.2)
        print(f"{len(ids)} jobs in {time.time() - started:.1f}s (solo pool, profiled)")
        worker.send_signal(signal.SIGINT)
        worker.wait(60)
    print(f"profile: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
