"""The job record: the documented format, and records written by the first version (format 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bpx_worker.jobs.record import FORMAT, AttemptState, JobRecord, JobState, StepState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_a_format_0_record_needing_review_reads_with_its_attempts_on_the_step():
    record = JobRecord.from_json((FIXTURES / "record-format-0-needs-review.json").read_text())
    assert record.format == FORMAT
    assert record.state is JobState.NEEDS_REVIEW and record.terminal
    step = record.steps["requestWithdrawal"]
    assert step.state is StepState.NEEDS_REVIEW
    assert [a.state for a in step.attempts] == [AttemptState.AMBIGUOUS]
    assert step.lookups == 7
    assert record.error is not None and record.error.code == "OUTCOME_UNKNOWN" and record.error.source == "worker"
    assert record.error.attempts is not None and record.error.attempts[0].state is AttemptState.AMBIGUOUS


def test_a_format_0_exchange_refusal_keeps_the_exchange_code_and_says_whose_it_is():
    record = JobRecord.from_json((FIXTURES / "record-format-0-rejected.json").read_text())
    assert record.error is not None
    assert (record.error.code, record.error.source) == ("INVALID_ADDRESS", "exchange")
    assert record.steps["requestWithdrawal"].attempts[0].state is AttemptState.REJECTED


def test_a_record_round_trips_through_its_json():
    record = JobRecord.from_json((FIXTURES / "record-format-0-needs-review.json").read_text())
    again = JobRecord.from_json(record.to_json())
    assert again == record
    assert json.loads(record.to_json())["format"] == FORMAT


def test_an_unknown_state_is_refused():
    raw = json.loads((FIXTURES / "record-format-0-rejected.json").read_text())
    raw["state"] = "exploded"
    with pytest.raises(ValidationError):
        JobRecord.model_validate(raw)
