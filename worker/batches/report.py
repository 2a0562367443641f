"""A batch's summary and its results file (CSV: line, row key, job id, state, withdrawal id, error code, detail)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from bpx_worker.batches.record import RowResult, RowStatus

RESULT_COLUMNS = ("line", "row_key", "job_id", "state", "withdrawal_id", "error_code", "detail")
# How the rows of a batch are counted in its summary, in this order.
GROUPS = ("succeeded", "failed", "needs_review", "refused", "invalid", "in_flight")


def group(result: RowResult) -> str:
    if result.state in ("succeeded", "failed", "needs_review", "refused", "invalid"):
        return result.state
    return "in_flight"  # pending, queued, running, unknown


@dataclass
class Summary:
    rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    already_paid: int = 0
    # per symbol: requested (every valid row), then the quantity per group
    per_symbol: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    @property
    def ended(self) -> int:
        return self.rows - self.counts["in_flight"]

    @property
    def all_succeeded(self) -> bool:
        return self.rows > 0 and self.counts["succeeded"] == self.rows


def summarize(results: Iterable[RowResult]) -> Summary:
    summary = Summary()
    for r in results:
        summary.rows += 1
        name = group(r)
        summary.counts[name] += 1
        summary.already_paid += r.status is RowStatus.ALREADY_PAID
        if r.symbol and r.quantity:
            amounts = summary.per_symbol.setdefault(r.symbol, {"requested": Decimal(0)})
            amounts["requested"] += Decimal(r.quantity)
            amounts[name] = amounts.get(name, Decimal(0)) + Decimal(r.quantity)
    summary.per_symbol = dict(sorted(summary.per_symbol.items()))
    return summary


def results_csv(results: Iterable[RowResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for r in results:
        writer.writerow([r.line, r.key or "", r.job_id or "", r.state, r.withdrawal_id or "", r.error_code or "",
                         r.detail or ""])
    return out.getvalue()


def write_results(path: str | Path, results: Iterable[RowResult]) -> Path:
    """Write the results file atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(results_csv(results))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
