"""The benchmark: the product against the ceiling Celery sets (A) and against the in-process path (B).

    .venv/bin/python -m benchmarks.bench [--jobs 2000] [--latency-ms 0] [--pool threads] [--concurrency 32]
    .venv/bin/python -m benchmarks.bench --quick            # make bench-quick: 200 jobs, under a minute
    .venv/bin/python -m benchmarks.bench sweep ...          # throughput against concurrency and round trip

One run starts its own stack (devtools/local.py): a private Redis with the production persistence
settings (AOF, appendfsync always, noeviction), the sandbox exchange (withdrawals visible and confirmed at
once, no added latency unless --latency-ms) and workers with the production settings (defaults of
config/settings.py and config/celery.py; only the pool and concurrency are options). It measures, for each
path, in this order and on the same stack:

- saturation: N jobs submitted at once and run to a terminal state; jobs/s from the first submit to the
  last end;
- latency at a fixed offered load: open-loop arrivals at --rate jobs/s (default: half the product's
  saturation throughput of this run), each job's submit-to-terminal time measured from its scheduled
  arrival (a late submit counts against the system, not for it);
- exchange calls per job (the sandbox's request counters), Redis commands per job (INFO commandstats
  before and after, less the harness's own), peak resident memory of the worker processes (psutil).

Paths: the product (submit_withdrawal -> the Celery chain of the workflow's steps -> job record); A, a bare
Celery chain of three no-op tasks with the same settings, Redis, pool and concurrency
(benchmarks/noop_app.py); B, the same workflows through the in-process path
(bpx_worker.withdrawal.runtime.run_withdrawal_inprocess) on as many threads as the worker has slots.

Prints one table per run and writes the figures to benchmarks/results/<time>-<label>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
from rich.console import Console
from rich.table import Table

from devtools.local import Stack, local_stack, wait_until

RESULTS = Path(__file__).parent / "results"
INPUTS = {"symbol": "USDC", "blockchain": "Solana", "address": "7YttLkHDoNj9wyDur5pM1ejNaAvT9X4eqaYcHQqtj2G5",
          "quantity": "1"}
SANDBOX_ARGS = ["--balances", "USDC=1000000000", "--history-lag", "0", "--confirm-delay", "0"]
# Production settings, except the log level (INFO would write a line per task to the worker's log file)
# and the rate limit.
# The shared rate limit toward the exchange (EXCHANGE_RATE_LIMIT, 10 a second by default) is kept, its
# Redis script counted, but set far above what the sandbox and this machine can do: the benchmark
# measures the worker, not the limit (at the real exchange, about 33 requests a second bound a run).
WORKER_ENV = {"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", "EXCHANGE_RATE_LIMIT": "100000",
              "EXCHANGE_RATE_BURST": "1000"}


# --------------------------------------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class RedisCounter:
    """Commands the server ran between two snapshots, less the ones this harness sent itself."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.own = 0

    def snapshot(self) -> dict[str, int]:
        self.own += 1
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    @staticmethod
    def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


class RssSampler(threading.Thread):
    """Peak resident memory of a process tree (a Celery worker and its pool), sampled every 0.1 s."""

    def __init__(self, *pids: int):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self.stopping = threading.Event()

    def sample(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                total += root.memory_info().rss
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.peak


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of a process and (unless told not to) its live children."""
    try:
        root = psutil.Process(pid)
        total = sum(root.cpu_times()[:2])
        for child in root.children(recursive=True) if children else []:
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


def cpu_split(stack: Stack, worker_pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of each part on the machine: the workers, Redis, the sandbox, this harness."""
    out = {"worker": sum(cpu_seconds(pid) for pid in worker_pids)} if worker_pids else {}
    if stack.redis and stack.redis.process:
        out["redis"] = cpu_seconds(stack.redis.process.pid)
    out["sandbox"] = cpu_seconds(stack.processes["sandbox"].pid)
    # The harness's children are the stack itself: count the harness process alone.
    out["harness"] = cpu_seconds(os.getpid(), children=False)
    return out


def exchange_requests(stack: Stack) -> int:
    ledger = requests.get(stack.sandbox_url + "/_sandbox/ledger", timeout=30).json()
    return sum(ledger["requests"].values())


@dataclass
class PathResult:
    """The figures of one path (product, A or B) in one run."""

    path: str
    jobs: int
    seconds: float
    jobs_per_s: float
    offered_rate: float | None = None
    latency_jobs: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    exchange_calls_per_job: float | None = None
    redis_commands_per_job: float | None = None
    redis_commands: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    states: dict[str, int] = field(default_factory=dict)
    # CPU milliseconds per job of each part (worker, redis, sandbox, harness) and its share of the
    # machine's cores over the measured phases: how the cores were split.
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    cores_used: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        values = self.latencies_ms
        return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
                "mean": statistics.fmean(values) if values else float("nan")}


def open_loop(count: int, rate: float, submit: Callable[[int], str]) -> list[tuple[str, float]]:
    """Submit `count` jobs at `rate` per second on a fixed schedule; (id, scheduled arrival) each."""
    started = time.time() + 0.05
    out = []
    for i in range(count):
        due = started + i / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        out.append((submit(i), due))
    return out


# ----------------------------------------------------------------------------------------------- paths


class Product:
    """The withdrawal worker through Celery: submit_withdrawal, the chain, the job record."""

    name = "product"

    def __init__(self, stack: Stack):
        from bpx_worker.interfaces.api import submit_withdrawal
        from bpx_worker.jobs.store import ACTIVE_INDEX, job_key
        from bpx_worker.tasks.app import job_store

        self.submit_withdrawal = submit_withdrawal
        self.job_key, self.active = job_key, ACTIVE_INDEX
        self.redis: redis.Redis = job_store().redis

    def submit(self, _: int) -> str:
        return self.submit_withdrawal(INPUTS["symbol"], INPUTS["blockchain"], INPUTS["address"], INPUTS["quantity"],
                                      idempotency_key=f"bench-{uuid.uuid4().hex}")

    def pending(self, counter: RedisCounter) -> int:
        counter.own += 1
        return int(self.redis.zcard(self.active))

    def finished(self, ids: list[str]) -> dict[str, tuple[float, str]]:
        from bpx_worker.jobs.record import JobRecord

        out = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for job_id, raw in zip(chunk, self.redis.mget([self.job_key(j) for j in chunk]), strict=True):
                if raw is None:
                    out[job_id] = (float("nan"), "missing")
                    continue
                record = JobRecord.from_json(raw)
                out[job_id] = (record.finished_at or float("nan"), record.state.value)
        return out


class BareChain:
    """Baseline A: three no-op tasks chained, with the product's Celery settings."""

    name = "A: bare Celery chain"

    def __init__(self, stack: Stack):
        from benchmarks.noop_app import DONE_KEY, noop_chain

        self.done_key, self.noop_chain = DONE_KEY, noop_chain
        self.redis = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        self.submitted = 0

    def submit(self, _: int) -> str:
        chain_id = uuid.uuid4().hex
        self.noop_chain(chain_id).apply_async()
        self.submitted += 1
        return chain_id

    def pending(self, counter: RedisCounter) -> int:
        counter.own += 1
        return self.submitted - int(self.redis.hlen(self.done_key))

    def finished(self, ids: list[str]) -> dict[str, tuple[float, str]]:
        ends = self.redis.hgetall(self.done_key)
        return {i: (float(ends[i]), "succeeded") if i in ends else (float("nan"), "missing") for i in ids}


def run_inprocess(stack: Stack, jobs: int, threads: int) -> PathResult:
    """Baseline B: the same workflows run by the in-process path, `threads` at a time."""
    from bpx_worker.config import settings
    from bpx_worker.withdrawal.runtime import run_withdrawal_inprocess

    s = settings.get()

    def one(_: int) -> tuple[float, str]:
        begun = time.time()
        record = run_withdrawal_inprocess(s, INPUTS, f"bench-{uuid.uuid4().hex}")
        return (time.time() - begun) * 1000, record.state.value

    sampler = RssSampler(os.getpid())
    sampler.start()
    cpu_before = cpu_split(stack, [])
    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(one, range(jobs)))
    seconds = time.time() - started
    cpu_after = cpu_split(stack, [])
    peak = sampler.stop()
    states: dict[str, int] = {}
    for _, state in outcomes:
        states[state] = states.get(state, 0) + 1
    return PathResult("B: in-process", jobs, seconds, jobs / seconds, latency_jobs=jobs,
                      latencies_ms=[ms for ms, _ in outcomes], peak_rss_mb=peak / 2**20, states=states,
                      cpu_ms_per_job={k: round((cpu_after[k] - cpu_before[k]) * 1000 / jobs, 2) for k in cpu_after},
                      cores_used={k: round((cpu_after[k] - cpu_before[k]) / seconds, 2) for k in cpu_after})


# ------------------------------------------------------------------------------------------------ a run


@dataclass
class Options:
    jobs: int = 2000
    latency_jobs: int | None = None  # default: as many as `latency_seconds` at the offered rate
    latency_seconds: float = 30.0
    rate: float | None = None
    latency_ms: int = 0
    pool: str = "threads"
    concurrency: int = 32
    workers: int = 1
    baselines: bool = True
    label: str = "run"
    timeout: float = 900.0


@contextmanager
def bench_stack(latency_ms: int) -> Iterator[Stack]:
    with local_stack(sandbox_args=SANDBOX_ARGS, start_worker=False, sandbox_state=False) as stack, \
            stack.activated(**WORKER_ENV):
        requests.post(stack.sandbox_url + "/_sandbox/faults", json={"latency_ms": latency_ms},
                      timeout=5).raise_for_status()
        yield stack


@contextmanager
def workers(stack: Stack, options: Options, app: str) -> Iterator[list[int]]:
    names = [f"bench{i}" for i in range(options.workers)]
    processes = [stack.start_worker(name, options.concurrency, pool=options.pool, app=app, **WORKER_ENV)
                 for name in names]
    try:
        yield [p.pid for p in processes]
    finally:
        for name in names:
            stack.stop_worker(name)


def measure_queued(stack: Stack, options: Options, path_cls: type[Product] | type[BareChain], app: str,
                   rate: float | None) -> PathResult:
    path = path_cls(stack)
    counter = RedisCounter(redis.Redis.from_url(stack.redis_url))
    with workers(stack, options, app) as pids:
        # One job first, so the worker is up and its connections open before the clock starts.
        first = path.submit(0)
        wait_until(lambda: path.pending(counter) == 0, 60, f"the first job of {path.name}", interval=0.05)
        del first
        sampler = RssSampler(*pids)
        sampler.start()
        calls_before, counter.own = exchange_requests(stack), 0
        cpu_before, clock_before = cpu_split(stack, pids), time.time()
        before = counter.snapshot()
        result = run_queued(path, counter, options, rate)
        after = counter.snapshot()
        cpu_after, clock_after = cpu_split(stack, pids), time.time()
        own = counter.own
        result.peak_rss_mb = sampler.stop() / 2**20
        calls = exchange_requests(stack) - calls_before
    commands = RedisCounter.diff(before, after)
    total = result.jobs + result.latency_jobs
    result.redis_commands = commands
    result.redis_commands_per_job = (sum(commands.values()) - own) / total
    result.exchange_calls_per_job = calls / total
    result.cpu_ms_per_job = {k: round((cpu_after[k] - cpu_before[k]) * 1000 / total, 2) for k in cpu_after}
    result.cores_used = {k: round((cpu_after[k] - cpu_before[k]) / (clock_after - clock_before), 2)
                         for k in cpu_after}
    return result


def run_queued(path: Product | BareChain, counter: RedisCounter, options: Options, rate: float | None) -> PathResult:
    """Saturation (N jobs at once), then latency at a fixed offered load (open-loop arrivals)."""
    started = time.time()
    ids = [path.submit(i) for i in range(options.jobs)]
    wait_until(lambda: path.pending(counter) == 0, options.timeout, f"{options.jobs} jobs of {path.name}",
               interval=0.1)
    ends = path.finished(ids)
    seconds = max(end for end, _ in ends.values()) - started
    sat = PathResult(path.name, options.jobs, seconds, options.jobs / seconds)
    offered = rate if rate is not None else sat.jobs_per_s / 2
    count = options.latency_jobs or max(20, int(offered * options.latency_seconds))
    arrivals = open_loop(count, offered, path.submit)
    wait_until(lambda: path.pending(counter) == 0, options.timeout, f"{count} jobs at {offered:.1f}/s",
               interval=0.1)
    lat_ends = path.finished([job_id for job_id, _ in arrivals])
    states: dict[str, int] = {}
    for _, state in [*ends.values(), *lat_ends.values()]:
        states[state] = states.get(state, 0) + 1
    sat.offered_rate, sat.latency_jobs, sat.states = offered, count, states
    sat.latencies_ms = [(lat_ends[job_id][0] - due) * 1000 for job_id, due in arrivals]
    return sat


def machine() -> dict[str, Any]:
    """Cores, memory, Python and Redis versions: printed with every result."""
    redis_version: str
    try:
        from devtools.local import redis_server_binary

        argv = [redis_server_binary(), "--version"]
        redis_version = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603
    except (OSError, RuntimeError):
        redis_version = "unknown"
    from importlib.metadata import version

    return {
        "cores": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "redis": redis_version, "celery": version("celery"),
        "kombu": version("kombu"), "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def run(options: Options, console: Console) -> dict[str, Any]:
    """One run: the product, then A and B with the same settings, N and offered load."""
    from bpx_worker import logs

    logs.configure("WARNING")
    results: list[PathResult] = []
    with bench_stack(options.latency_ms) as stack:
        product = measure_queued(stack, options, Product, "bpx_worker.tasks.app", options.rate)
        results.append(product)
        if options.baselines:
            results.append(measure_queued(stack, options, BareChain, "benchmarks.noop_app", product.offered_rate))
            calls_before = exchange_requests(stack)
            inprocess = run_inprocess(stack, options.jobs, options.concurrency)
            inprocess.exchange_calls_per_job = (exchange_requests(stack) - calls_before) / options.jobs
            results.append(inprocess)
    report = {
        "label": options.label, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "options": asdict(options),
        "machine": machine(), "results": [asdict(r) | {"latency_ms": r.summary()} for r in results],
        "ratios": ratios(results),
    }
    print_table(report, console)
    return report


def ratios(results: list[PathResult]) -> dict[str, float]:
    by = {r.path.split(":")[0]: r for r in results}
    out = {}
    if "product" in by and "A" in by:
        out["product/A"] = by["product"].jobs_per_s / by["A"].jobs_per_s
    if "product" in by and "B" in by:
        out["product/B"] = by["product"].jobs_per_s / by["B"].jobs_per_s
    return out


def print_table(report: dict[str, Any], console: Console) -> None:
    o = report["options"]
    table = Table(title=f"{report['label']}: {o['jobs']} jobs, {o['workers']} worker(s), pool {o['pool']} x "
                        f"{o['concurrency']}, exchange round trip +{o['latency_ms']} ms")
    for column in ("path", "jobs/s", "offered/s", "p50 ms", "p95 ms", "p99 ms", "exchange calls/job",
                   "Redis cmds/job", "peak RSS MB", "states"):
        table.add_column(column, justify="left" if column in ("path", "states") else "right")

    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None or value != value else f"{value:.{digits}f}"

    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(r["path"], num(r["jobs_per_s"]), num(r["offered_rate"]), num(lat["p50"], 0),
                      num(lat["p95"], 0), num(lat["p99"], 0), num(r["exchange_calls_per_job"], 2),
                      num(r["redis_commands_per_job"], 1), num(r["peak_rss_mb"], 0),
                      " ".join(f"{k}={v}" for k, v in sorted(r["states"].items())))
    console.print(table)
    if report["ratios"]:
        console.print("  ".join(f"{k} = {v:.2f}" for k, v in report["ratios"].items()))
    for r in report["results"]:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cores_used"].items())
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_job"].items())
        console.print(f"{r['path']}: cores used {cores}; CPU ms/job {cpu}")
    m = report["machine"]
    console.print(f"machine: {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, {m['redis']}, "
                  f"load average at start {m['load_average_at_start']}")


def save(report: dict[str, Any], out: Path | None = None) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{report['label']}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    return path


# ------------------------------------------------------------------------------------------------ sweep


def sweep(base: Options, concurrencies: list[int], latencies: list[int], console: Console) -> dict[str, Any]:
    """Saturation throughput of the product against the pool's concurrency and the exchange's round trip."""
    points = []
    for latency in latencies:
        for concurrency in concurrencies:
            options = Options(**{**asdict(base), "concurrency": concurrency, "latency_ms": latency,
                                 "baselines": False, "latency_jobs": 20,
                                 "label": f"{base.pool}{concurrency}-rtt{latency}"})
            report = run(options, console)
            product = report["results"][0]
            points.append({"pool": base.pool, "concurrency": concurrency, "latency_ms": latency,
                           "jobs_per_s": product["jobs_per_s"], "peak_rss_mb": product["peak_rss_mb"]})
    return {"label": "sweep", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=("run", "sweep"))
    parser.add_argument("--jobs", type=int, default=2000, help="N jobs per path (default 2000)")
    parser.add_argument("--quick", action="store_true", help="200 jobs, a 5 s latency phase: under a minute")
    parser.add_argument("--rate", type=float, help="offered load of the latency phase, jobs/s "
                        "(default: half the product's saturation throughput in this run)")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency phase")
    parser.add_argument("--latency-ms", type=int, default=0, help="exchange round trip added by the sandbox "
                        "(0, 50, 100)")
    parser.add_argument("--pool", default="threads", help="Celery pool of the workers (threads, prefork)")
    parser.add_argument("--concurrency", type=int, default=32, help="worker pool slots")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each with the pool")
    parser.add_argument("--no-baselines", action="store_true", help="the product only")
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", type=Path, help="result file (default benchmarks/results/<time>-<label>.json)")
    parser.add_argument("--concurrencies", default="2,8,16,32,64", help="sweep: pool sizes")
    parser.add_argument("--latencies", default="0,50,100", help="sweep: round trips, ms")
    args = parser.parse_args(argv)
    console = Console(highlight=False, width=170)
    options = Options(jobs=args.jobs, rate=args.rate, latency_seconds=args.latency_seconds,
                      latency_ms=args.latency_ms, pool=args.pool, concurrency=args.concurrency, workers=args.workers,
                      baselines=not args.no_baselines, label=args.label)
    if args.quick:
        options.jobs, options.latency_seconds = 200, 5.0
        options.label = "quick" if args.label == "run" else args.label
    if args.command == "sweep":
        report = sweep(options, [int(c) for c in args.concurrencies.split(",")],
                       [int(v) for v in args.latencies.split(",")], console)
    else:
        report = run(options, console)
    console.print(f"results: {save(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
