"""The charts of docs/benchmarks.md, drawn from the documented result files.

    .venv/bin/python -m benchmarks.charts [--run FILE] [--sweep FILE ...] [--out docs/img]

- latency.png: the submit-to-terminal latency distribution (CDF) of each path in one run;
- throughput-concurrency.png: the product's saturation throughput against the pool's slots, one line
  per exchange round trip;
- throughput-roundtrip.png: the same against the exchange round trip, one line per pool.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCUMENTED = Path(__file__).parent / "results" / "documented"
OUT = Path(__file__).parent.parent / "docs" / "img"


def latency_chart(run: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in run["results"]:
        values = sorted(result["latencies_ms"])
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        how = "each job's run time, all at once" if result["offered_rate"] is None else "open loop"
        ax.plot(values, ys, label=f"{result['path']} ({how}; p99 {result['latency_ms']['p99']:.0f} ms)")
    o = run["options"]
    ax.set_xscale("log")
    ax.set_xlabel("submit to terminal, ms (log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"Latency at {run['results'][0]['offered_rate']:.0f} jobs/s offered, pool {o['pool']} x "
                 f"{o['concurrency']}, round trip +{o['latency_ms']} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out / "latency.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_points(sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [point for sweep in sweeps for point in sweep["points"]]


def concurrency_chart(points: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pool in sorted({p["pool"] for p in points}):
        for latency in sorted({p["latency_ms"] for p in points if p["pool"] == pool}):
            line = sorted((p["concurrency"], p["jobs_per_s"]) for p in points
                          if p["pool"] == pool and p["latency_ms"] == latency)
            ax.plot([c for c, _ in line], [v for _, v in line], marker="o", label=f"{pool}, +{latency} ms")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pool slots (worker concurrency)")
    ax.set_ylabel("jobs/s (saturation)")
    ax.set_title("Throughput against concurrency, one worker on 2 cores")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out / "throughput-concurrency.png")


def roundtrip_chart(points: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pool, concurrency in sorted({(p["pool"], p["concurrency"]) for p in points}):
        line = sorted((p["latency_ms"], p["jobs_per_s"]) for p in points
                      if p["pool"] == pool and p["concurrency"] == concurrency)
        if len(line) > 1:
            ax.plot([c for c, _ in line], [v for _, v in line], marker="o", label=f"{pool} x {concurrency}")
    ax.set_xlabel("exchange round trip added by the sandbox, ms")
    ax.set_ylabel("jobs/s (saturation)")
    ax.set_title("Throughput against the exchange's round trip")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out / "throughput-roundtrip.png")


def markdown_table(run: dict[str, Any]) -> str:
    """The run's table as Markdown, for docs/benchmarks.md."""
    lines = [("| path | jobs/s | offered/s | p50 ms | p95 ms | p99 ms | exchange calls/job | Redis cmds/job "
              "| peak RSS MB | CPU ms/job (worker, Redis, sandbox, load generator) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]

    def num(value: float | None, digits: int = 1) -> str:
        return "\u2013" if value is None or value != value else f"{value:.{digits}f}"  # an en dash

    for r in run["results"]:
        lat, cpu = r["latency_ms"], r.get("cpu_ms_per_job", {})
        parts = ", ".join(num(cpu.get(k)) for k in ("worker", "redis", "sandbox", "harness"))
        lines.append(f"| {r['path']} | {num(r['jobs_per_s'])} | {num(r['offered_rate'])} | {num(lat['p50'], 0)} "
                     f"| {num(lat['p95'], 0)} | {num(lat['p99'], 0)} | {num(r['exchange_calls_per_job'], 2)} "
                     f"| {num(r['redis_commands_per_job'])} | {num(r['peak_rss_mb'], 0)} | {parts} |")
    ratios = "; ".join(f"{k} = {v:.2f}" for k, v in run.get("ratios", {}).items())
    return "\n".join(lines) + (f"\n\n{ratios}" if ratios else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=DOCUMENTED / "run.json")
    parser.add_argument("--sweep", type=Path, nargs="*", default=sorted(DOCUMENTED.glob("sweep*.json")))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", type=Path, nargs="*", help="print these runs' tables as Markdown and stop")
    args = parser.parse_args(argv)
    if args.table:
        for path in args.table:
            print(f"{path.name}\n\n{markdown_table(json.loads(path.read_text()))}\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    made = [latency_chart(json.loads(args.run.read_text()), args.out)]
    if args.sweep:
        points = sweep_points([json.loads(p.read_text()) for p in args.sweep])
        made += [concurrency_chart(points, args.out), roundtrip_chart(points, args.out)]
    for path in made:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
