"""The payout file: every bad row reported with its line, field and reason; identity by content."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bpx_worker.batches.payout_file import NO_TOKEN, RowError, parse_payout_file
from bpx_worker.batches.record import RowResult, RowStatus
from bpx_worker.batches.report import results_csv, summarize
from bpx_worker.batches.store import from_units, to_units
from bpx_worker.config.settings import PayoutSchedule
from bpx_worker.withdrawal.request import SafetyLimits

ADDRESS = "7Vf4ynARz18mcigwt3CmC4Ptkziqpucr3dKG26NYjA2N"
HEADER = "key,symbol,blockchain,address,quantity\n"


def csv_file(*rows: str) -> bytes:
    return (HEADER + "".join(row + "\n" for row in rows)).encode()


def test_a_good_csv_file_gives_rows_with_their_lines_and_totals_per_symbol():
    parsed = parse_payout_file("june.csv", csv_file(f"a-1,USDC,Solana,{ADDRESS},12.50",
                                                    f"a-2,USDC,Solana,{ADDRESS},7.5", f"a-3,SOL,Solana,{ADDRESS},1"))
    assert parsed.errors == []
    assert [(r.line, r.key) for r in parsed.rows] == [(2, "a-1"), (3, "a-2"), (4, "a-3")]
    assert parsed.totals() == {"SOL": Decimal(1), "USDC": Decimal(20)}
    assert parsed.rows[0].fingerprint()["quantity"] == "12.5"  # 12.50 and 12.5 are the same payout


def test_every_bad_row_is_reported_with_line_field_and_reason():
    parsed = parse_payout_file("june.csv", csv_file(
        f"a-1,USDC,Solana,{ADDRESS},12.5",
        f"a 2,USDC,Solana,{ADDRESS},1",
        f"a-3,USDC,Solana,{ADDRESS},-4",
        f"a-4,usdc,Solana,{ADDRESS},1e3",
        f"a-1,USDC,Solana,{ADDRESS},1",
        "a-6,USDC,Solana",
    ))
    assert [r.key for r in parsed.rows] == ["a-1"]
    assert RowError(3, "key", "must be 1-64 letters, digits, '.', '_' or '-'") in parsed.errors
    assert RowError(4, "quantity", "must be greater than zero, written without a sign") in parsed.errors
    assert {(e.line, e.field) for e in parsed.errors} >= {(5, "symbol"), (5, "quantity"), (6, "key"), (7, "row")}
    assert any(e.line == 6 and "duplicate of line 2" in e.reason for e in parsed.errors)
    assert parsed.bad_lines == [3, 4, 5, 6, 7]


def test_a_token_column_is_refused_by_name_and_no_row_is_read():
    data = b"key,symbol,blockchain,address,quantity,two_factor_token\nk,USDC,Solana,a,1,123456\n"
    parsed = parse_payout_file("june.csv", data)
    assert parsed.rows == []
    assert parsed.errors == [RowError(1, "two_factor_token", NO_TOKEN)]


def test_missing_and_unknown_columns_are_named():
    parsed = parse_payout_file("june.csv", b"key,symbol,chain,address,quantity\n")
    assert {(e.field, e.reason) for e in parsed.errors} == {
        ("blockchain", "missing column"),
        ("chain", "unknown column; expected key, symbol, blockchain, address, quantity"),
    }


def test_json_lines_read_numbers_exactly_and_report_bad_lines():
    lines = [
        {"key": "j-1", "symbol": "USDC", "blockchain": "Solana", "address": ADDRESS, "quantity": "2.5"},
        {"key": "j-2", "symbol": "USDC", "blockchain": "Solana", "address": ADDRESS},
        "not json",
        {"key": "j-4", "symbol": "USDC", "blockchain": "Solana", "address": ADDRESS, "quantity": "1", "token": "1"},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    text += f'\n{{"key": "j-5", "symbol": "USDC", "blockchain": "Solana", "address": "{ADDRESS}", "quantity": 0.1}}\n'
    parsed = parse_payout_file("june.jsonl", text.encode())
    assert [(r.line, r.key, r.quantity) for r in parsed.rows] == [(1, "j-1", Decimal("2.5")),
                                                                  (5, "j-5", Decimal("0.1"))]
    assert RowError(2, "quantity", "required") in parsed.errors
    assert any(e.line == 3 and e.field == "row" for e in parsed.errors)
    assert RowError(4, "token", NO_TOKEN) in parsed.errors


def test_operator_limits_apply_to_each_row():
    parsed = parse_payout_file("june.csv", csv_file(f"a-1,USDC,Solana,{ADDRESS},600"),
                               SafetyLimits(max_quantity={"USDC": Decimal(500)}))
    assert parsed.errors == [RowError(2, "quantity", "exceeds the per-job limit of 500 USDC")]


def test_the_same_bytes_have_the_same_identity_and_an_edit_changes_it():
    one = parse_payout_file("a.csv", csv_file(f"a-1,USDC,Solana,{ADDRESS},1"))
    same = parse_payout_file("b.csv", csv_file(f"a-1,USDC,Solana,{ADDRESS},1"))
    edited = parse_payout_file("a.csv", csv_file(f"a-1,USDC,Solana,{ADDRESS},1.0"))
    assert one.sha256 == same.sha256 != edited.sha256


def test_an_empty_or_non_utf8_file_is_refused():
    assert parse_payout_file("a.csv", HEADER.encode()).errors == [RowError(0, "file", "no payout rows")]
    assert parse_payout_file("a.csv", b"\xff\xfe").errors[0].field == "file"


@pytest.mark.parametrize("amount", ["0.000000000000000001", "12.5", "99999999999999999999.999999999999999999"])
def test_reservation_units_are_exact(amount):
    assert from_units(to_units(Decimal(amount))) == Decimal(amount)


def test_a_balance_is_rounded_down_to_units_never_up():
    assert to_units(Decimal("1.0000000000000000009"), floor=True) == "1000000000000000000"


def test_summary_counts_states_and_totals_per_symbol():
    rows = [RowResult(line=2, key="a", symbol="USDC", quantity="1.5", job_id="j1", state="succeeded",
                      status=RowStatus.SUBMITTED, ended=True),
            RowResult(line=3, key="b", symbol="USDC", quantity="2", job_id="j2", state="failed",
                      error_code="INSUFFICIENT_FUNDS", status=RowStatus.SUBMITTED, ended=True),
            RowResult(line=4, key="c", symbol="USDC", quantity="3", job_id="j0", state="succeeded",
                      status=RowStatus.ALREADY_PAID, ended=True)]
    summary = summarize(rows)
    assert (summary.counts["succeeded"], summary.counts["failed"], summary.already_paid) == (2, 1, 1)
    assert summary.per_symbol["USDC"] == {"requested": Decimal("6.5"), "succeeded": Decimal("4.5"),
                                          "failed": Decimal(2)}
    assert not summary.all_succeeded
    assert results_csv(rows).splitlines()[2] == "3,b,j2,failed,,INSUFFICIENT_FUNDS,"


def test_a_schedule_needs_exactly_one_timing():
    assert PayoutSchedule(name="n", inbox="/x", every=30).every == 30
    assert PayoutSchedule(name="n", inbox="/x", cron="0 2 * * *").cron == "0 2 * * *"
    with pytest.raises(ValueError, match="exactly one of cron or every"):
        PayoutSchedule(name="n", inbox="/x")
    with pytest.raises(ValueError, match="five fields"):
        PayoutSchedule(name="n", inbox="/x", cron="0 2 * *")
