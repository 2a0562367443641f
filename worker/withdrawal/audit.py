"""The daily check of a payments team: the exchange's withdrawal history against the job records. Pure.

`compare` takes the withdrawals the exchange shows for a window and the job
records, matched by clientId, and reports:

- withdrawals without a job: made behind the worker's back, or by a job whose record is gone;
- jobs whose record disagrees with the exchange: a `failed` job with a withdrawal, a `succeeded` job
  whose withdrawal is not confirmed or is another one, a withdrawal whose symbol, blockchain,
  quantity or address differs from the job's request, several withdrawals for one job;
- jobs the exchange does not know: a record that names a withdrawal (or says `succeeded`) while the
  exchange shows none with its clientId or id.

Jobs still needing review are listed apart: they are not findings, a human is on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.withdrawal.history import differences
from bpx_worker.withdrawal.rules import CONFIRMED

Kind = Literal["withdrawal_without_job", "record_disagrees", "unknown_to_exchange", "awaiting_review"]

TITLES: dict[Kind, str] = {
    "withdrawal_without_job": "withdrawals without a job",
    "record_disagrees": "jobs whose record disagrees with the exchange",
    "unknown_to_exchange": "jobs the exchange does not know",
    "awaiting_review": "jobs awaiting review (not findings: listed for the record)",
}


@dataclass(frozen=True)
class Finding:
    kind: Kind
    message: str
    job_id: str | None = None
    client_id: str | None = None
    withdrawal_id: Any = None


@dataclass
class AuditReport:
    start: float
    end: float
    withdrawals: int  # seen at the exchange in the window
    jobs: int  # records created in the window
    entries: list[Finding] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        """What a human must look at: everything but the jobs already awaiting review."""
        return [f for f in self.entries if f.kind != "awaiting_review"]

    def of(self, kind: Kind) -> list[Finding]:
        return [f for f in self.entries if f.kind == kind]


def claimed_withdrawal(record: JobRecord) -> Any:
    """The withdrawal id the record names: its outputs, a human's resolution, or a step's outputs."""
    if record.outputs.get("withdrawalId") is not None:
        return record.outputs["withdrawalId"]
    if record.resolution is not None and record.resolution.withdrawal_id is not None:
        return record.resolution.withdrawal_id
    for step in record.steps.values():
        if step.outputs.get("withdrawalId") is not None:
            return step.outputs["withdrawalId"]
    return None


def expects_withdrawal(record: JobRecord) -> bool:
    """Whether the record says a withdrawal exists at the exchange."""
    return record.state is JobState.SUCCEEDED or claimed_withdrawal(record) is not None


def unknown_candidates(withdrawals: Iterable[Mapping[str, Any]], records: Iterable[JobRecord],
                       start: float, end: float) -> list[JobRecord]:
    """Records created in the window that name a withdrawal the window's history does not hold
    (to be looked up by clientId before they are reported: the withdrawal may fall outside the window)."""
    seen_clients = {w.get("clientId") for w in withdrawals}
    seen_ids = {str(w.get("id")) for w in withdrawals}
    return [r for r in records if start <= r.created_at <= end and expects_withdrawal(r)
            and r.client_id not in seen_clients and str(claimed_withdrawal(r)) not in seen_ids]


def compare(withdrawals: Sequence[Mapping[str, Any]], records: Iterable[JobRecord], start: float,
            end: float) -> AuditReport:
    """The report for the window; `records` may reach back before it (jobs created earlier are matched too)."""
    records = list(records)
    by_client = {r.client_id: r for r in records}
    report = AuditReport(start, end, withdrawals=len(withdrawals),
                         jobs=sum(1 for r in records if start <= r.created_at <= end))
    mine: dict[str, list[Mapping[str, Any]]] = {}
    for w in withdrawals:
        client_id = w.get("clientId")
        if isinstance(client_id, str) and client_id in by_client:
            mine.setdefault(client_id, []).append(w)
        else:
            report.entries.append(Finding(
                "withdrawal_without_job",
                f"#{w.get('id')} {w.get('quantity')} {w.get('symbol')} on {w.get('blockchain')} to "
                f"{w.get('toAddress')}, status {w.get('status')}, created {w.get('createdAt')}, "
                f"clientId {client_id or '-'}",
                client_id=client_id if isinstance(client_id, str) else None, withdrawal_id=w.get("id")))
    for client_id, found in mine.items():
        report.entries.extend(_judge(by_client[client_id], found))
    for record in records:
        if (record.state is JobState.NEEDS_REVIEW and record.client_id not in mine and not expects_withdrawal(record)
                and start <= record.created_at <= end):
            code = record.error.code if record.error else "-"
            report.entries.append(Finding("awaiting_review", f"{code}; the exchange shows no withdrawal with its "
                                          "clientId", job_id=record.job_id, client_id=record.client_id))
    for record in unknown_candidates(withdrawals, records, start, end):
        report.entries.append(Finding(
            "unknown_to_exchange",
            f"record {record.state.value} names withdrawal {claimed_withdrawal(record) or '-'}; "
            f"the exchange shows none with clientId {record.client_id}",
            job_id=record.job_id, client_id=record.client_id, withdrawal_id=claimed_withdrawal(record)))
    return report


def _judge(record: JobRecord, found: list[Mapping[str, Any]]) -> list[Finding]:
    problems: list[str] = []
    ids = ", ".join(f"#{w.get('id')}" for w in found)
    if len(found) > 1:
        problems.append(f"{len(found)} withdrawals carry its clientId ({ids})")
    for w in found:
        for name, (ours, theirs) in sorted(differences(record.inputs, w).items()):
            problems.append(f"{name}: record {ours}, exchange #{w.get('id')} {theirs}")
    claimed = claimed_withdrawal(record)
    state = record.state
    if state is JobState.FAILED:
        code = record.error.code if record.error else "-"
        problems.append(f"record failed ({code}), the exchange shows {ids} "
                        f"(status {', '.join(str(w.get('status')) for w in found)})")
    elif state is JobState.SUCCEEDED:
        if claimed is not None and all(str(w.get("id")) != str(claimed) for w in found):
            problems.append(f"record names withdrawal {claimed}, the exchange shows {ids}")
        for w in found:
            if w.get("status") != CONFIRMED:
                problems.append(f"record succeeded, the exchange shows #{w.get('id')} {w.get('status')}")
    base = dict(job_id=record.job_id, client_id=record.client_id, withdrawal_id=claimed or found[0].get("id"))
    if problems:
        return [Finding("record_disagrees", "; ".join(problems), **base)]
    if state is JobState.NEEDS_REVIEW:
        code = record.error.code if record.error else "-"
        return [Finding("awaiting_review", f"{code}; the exchange shows {ids} "
                        f"(status {', '.join(str(w.get('status')) for w in found)})", **base)]
    return []
