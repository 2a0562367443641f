"""The pure parts of the operators' commands: dates on the command line, how jobs print, the audit's judgement."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from bpx_worker.interfaces.common import parse_moment, stamp
from bpx_worker.interfaces.display import describe, job_lines, outcome, show
from bpx_worker.jobs.record import ErrorCode, JobFailure, JobRecord, JobState, Resolution, StepRecord
from bpx_worker.withdrawal.audit import compare
from bpx_worker.withdrawal.history import created_at, differences

T0 = datetime(2025, 1, 2, 10, 0, tzinfo=UTC).timestamp()


def _record(state: str = "succeeded", client_id: str = "wd-a", created: float = T0 + 60, **extra) -> JobRecord:
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": "AddrA", "quantity": "10", "clientId": client_id}
    job_id = hashlib.sha256(client_id.encode()).hexdigest()[:32]
    return JobRecord(job_id=job_id, idempotency_key=client_id, client_id=client_id, inputs=inputs,
                     state=JobState(state), created_at=created, updated_at=created, **extra)


def _withdrawal(wid: int = 1, client_id: str | None = "wd-a", status: str = "confirmed", quantity: str = "10",
                address: str = "AddrA", created: str = "2025-01-02T10:01:30.000") -> dict:
    return {"id": wid, "clientId": client_id, "status": status, "quantity": quantity, "toAddress": address,
            "symbol": "USDC", "blockchain": "Solana", "createdAt": created}


# --- dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2025-01-02", T0 - 10 * 3600),
    ("2025-01-02T10:00", T0),
    ("2025-01-02 10:00:00", T0),
    ("2025-01-02T12:00+02:00", T0),
    ("2025-01-02T10:00:00Z", T0),
    (str(int(T0)), T0),
])
def test_dates_on_the_command_line_are_utc_unless_a_zone_is_given(text, expected):
    assert parse_moment(text) == expected


def test_a_time_ago_counts_back_from_now():
    assert parse_moment("24h", now=T0) == T0 - 86400
    assert parse_moment("7d", now=T0) == T0 - 7 * 86400
    assert parse_moment("30m", now=T0) == T0 - 1800


def test_a_date_that_does_not_parse_says_what_is_expected():
    with pytest.raises(ValueError, match="is not a date: use 2025-01-02"):
        parse_moment("yesterday")


def test_exchange_created_at_without_a_zone_is_utc():
    assert created_at({"createdAt": "2025-01-02T10:00:00.000"}) == T0
    assert created_at({"createdAt": None}) is None


# --- how jobs print ----------------------------------------------------------------------------


def test_an_event_prints_the_time_it_happened_not_the_time_it_is_shown():
    line = describe({"event": "step_done", "step": "requestWithdrawal", "status_code": "200", "at": str(T0 + 1.234)})
    assert line.startswith("10:00:01.234 step_done    requestWithdrawal")
    assert "status_code=200" in line


# The codes a job can end `needs_review` with (the others end it `failed`, nothing having been sent).
REVIEW_CODES = ["OUTCOME_UNKNOWN", "LOOKUP_MISMATCH", "STATUS_NEEDS_REVIEW", "RECONCILE_DEADLINE", "CRITERIA_NOT_MET",
                "TRANSIENT_EXHAUSTED", "CONFIGURATION"]


@pytest.mark.parametrize("state, code", [("failed", c.value) for c in ErrorCode]
                         + [("needs_review", c) for c in REVIEW_CODES])
def test_the_event_ending_a_job_fits_80_columns_before_its_message(state, code):
    event = {"event": "job_ended", "step": "reconcileWithdrawal", "state": state, "code": code, "at": str(T0)}
    line = describe(event)
    assert len(line) <= 80, line
    assert describe({**event, "message": "m"}) == line + "  m"


def test_an_ended_job_shows_its_error_code_not_empty_outputs():
    record = _record("failed", error=JobFailure(step="getBalances", code="INSUFFICIENT_FUNDS", message="too little"))
    assert outcome(record) == "INSUFFICIENT_FUNDS at getBalances: too little"
    review = _record("needs_review", error=JobFailure(step="requestWithdrawal", code="OUTCOME_UNKNOWN", message="m"))
    assert outcome(review).startswith("OUTCOME_UNKNOWN at requestWithdrawal")
    done = _record("succeeded", outputs={"withdrawalId": 7, "status": "confirmed"})
    assert outcome(done) == "withdrawalId=7 status=confirmed"


def test_a_resolved_job_says_who_resolved_it():
    record = _record("succeeded", resolution=Resolution(outcome="succeeded", by="alice", at=T0, note="checked",
                                                         withdrawal_id=7, exchange_status="confirmed"))
    assert outcome(record) == "(resolved by alice, withdrawal 7: checked)"


def test_a_listed_job_prints_in_lines_under_80_columns():
    record = _record("needs_review", client_id="wdh-" + "k" * 64, batch_id="payroll-2025-01",
                     error=JobFailure(step="reconcileWithdrawal", code="STATUS_NEEDS_REVIEW", message="m"))
    lines = job_lines(record)
    assert lines[0] == f"{record.job_id}  needs_review  STATUS_NEEDS_REVIEW"
    assert lines[1].startswith("  created 2025-01-02 10:01:00.000")
    assert f"  clientId {record.client_id}" in lines
    assert all(len(line) <= 80 for line in lines), lines
    assert any("batch payroll-2025-01" in line for line in lines)


LONG = ('the request may have reached the exchange but clientId wd-payout-42 was not found after 14 lookups '
        '(3 failed); it was not re-sent {"expected": {"quantity": "12.5", "address": "Addr1111"}}')


def test_on_a_terminal_a_long_line_breaks_between_words_never_inside_one():
    record = _record("needs_review", error=JobFailure(step="requestWithdrawal", code="OUTCOME_UNKNOWN", message=LONG))
    tty = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None, soft_wrap=True)
    show(record, tty)
    lines = tty.file.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    error = next(i for i, line in enumerate(lines) if line.startswith("  error"))
    assert " ".join(line.strip() for line in lines[error:]).endswith(LONG)  # every word whole, in order


def test_in_a_file_a_long_line_stays_whole():
    record = _record("needs_review", error=JobFailure(step="requestWithdrawal", code="OUTCOME_UNKNOWN", message=LONG))
    log = Console(file=io.StringIO(), force_terminal=False, width=80, soft_wrap=True)
    show(record, log)
    assert f"  error     OUTCOME_UNKNOWN (worker) at requestWithdrawal: {LONG}" in log.file.getvalue().splitlines()


def test_stamp_is_utc_with_milliseconds():
    assert stamp(T0 + 0.5) == "2025-01-02 10:00:00.500"
    assert stamp(T0, date=False) == "10:00:00.000"


# --- the audit ---------------------------------------------------------------------------------


def test_a_withdrawal_nobody_asked_for_is_reported():
    report = compare([_withdrawal(9, client_id=None), _withdrawal(1)], [_record(outputs={"withdrawalId": 1})],
                     T0, T0 + 3600)
    assert [(f.kind, f.withdrawal_id) for f in report.findings] == [("withdrawal_without_job", 9)]


def test_a_job_whose_quantity_or_address_differs_disagrees():
    report = compare([_withdrawal(1, quantity="11", address="AddrB")], [_record(outputs={"withdrawalId": 1})],
                     T0, T0 + 3600)
    [finding] = report.findings
    assert finding.kind == "record_disagrees"
    assert "quantity: record 10, exchange #1 11" in finding.message
    assert "address: record AddrA, exchange #1 AddrB" in finding.message


def test_quantities_are_compared_as_decimals():
    assert differences({"quantity": "10", "symbol": "USDC", "blockchain": "Solana", "address": "A"},
                       {"quantity": "10.000", "symbol": "USDC", "blockchain": "Solana", "toAddress": "A"}) == {}


def test_a_succeeded_job_whose_withdrawal_is_not_confirmed_disagrees():
    report = compare([_withdrawal(1, status="pending")], [_record(outputs={"withdrawalId": 1})], T0, T0 + 3600)
    assert [f.kind for f in report.findings] == ["record_disagrees"]
    assert "record succeeded, the exchange shows #1 pending" in report.findings[0].message


def test_a_failed_job_with_a_withdrawal_disagrees():
    record = _record("failed", error=JobFailure(step="requestWithdrawal", code="CANCELLED", message="m"))
    report = compare([_withdrawal(1)], [record], T0, T0 + 3600)
    assert "record failed (CANCELLED), the exchange shows #1" in report.findings[0].message


def test_a_succeeded_job_the_exchange_does_not_show_is_unknown():
    report = compare([], [_record(outputs={"withdrawalId": 5})], T0, T0 + 3600)
    assert [(f.kind, f.withdrawal_id) for f in report.findings] == [("unknown_to_exchange", 5)]


def test_jobs_created_outside_the_window_are_matched_but_not_counted_as_unknown():
    old = _record(created=T0 - 86400, outputs={"withdrawalId": 5})
    assert compare([], [old], T0, T0 + 3600).findings == []
    assert compare([_withdrawal(5, client_id="wd-a")], [old], T0, T0 + 3600).findings == []


def test_a_job_awaiting_review_is_listed_but_is_no_finding():
    record = _record("needs_review", error=JobFailure(step="requestWithdrawal", code="OUTCOME_UNKNOWN", message="m"),
                     steps={"requestWithdrawal": StepRecord(started_at=T0)})
    report = compare([_withdrawal(1)], [record], T0, T0 + 3600)
    assert report.findings == []
    assert [f.kind for f in report.entries] == ["awaiting_review"]


def test_two_withdrawals_for_one_job_disagree():
    report = compare([_withdrawal(1), _withdrawal(2)], [_record(outputs={"withdrawalId": 1})], T0, T0 + 3600)
    assert "2 withdrawals carry its clientId (#1, #2)" in report.findings[0].message
