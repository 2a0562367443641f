"""The backoff (tenacity wait strategies) and the withdrawal rules: pure functions."""

import random
from decimal import Decimal

import pytest

from bpx_worker.engine.backoff import Backoff
from bpx_worker.engine.rules import Verdict
from bpx_worker.jobs.record import ErrorCode
from bpx_worker.withdrawal import rules as withdrawal


@pytest.mark.parametrize("attempt, expected", [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (10, 10.0)])
def test_backoff_grows_and_caps(attempt, expected):
    assert Backoff(1.0, 2.0, 10.0).delay(attempt) == expected


def test_jitter_stays_between_half_and_full_delay():
    policy = Backoff(1.0, 2.0, 10.0, jitter=True)
    random.seed(7)
    for attempt in range(8):
        base = Backoff(1.0, 2.0, 10.0).delay(attempt)
        draws = [policy.delay(attempt) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in draws)
        assert len(set(draws)) > 1  # really drawn, not fixed


def test_exhausted_counts_attempts():
    policy = Backoff(1, 2, 10, max_attempts=3)
    assert not policy.exhausted(2) and policy.exhausted(3)
    assert not Backoff(1, 2, 10).exhausted(10**6)


@pytest.mark.parametrize("kwargs", [dict(initial=-1, factor=2, max_delay=1), dict(initial=1, factor=0.5, max_delay=1),
                                    dict(initial=1, factor=2, max_delay=0), dict(initial=1, factor=2, max_delay=1,
                                                                                 max_attempts=0)])
def test_bad_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


BALANCES = {"USDC": {"available": "100.5", "locked": "3", "staked": "0"}}


@pytest.mark.parametrize("symbol, quantity, short", [
    ("USDC", "100.5", False), ("USDC", "100.50000001", True), ("USDC", "1", False),
    ("SOL", "0.000001", True),  # a symbol missing from the balances counts as zero
])
def test_shortfall(symbol, quantity, short):
    assert (withdrawal.shortfall(BALANCES, symbol, Decimal(quantity)) is not None) is short


def test_locked_funds_do_not_count():
    assert withdrawal.available(BALANCES, "USDC") == Decimal("100.5")


@pytest.mark.parametrize("status, verdict", [
    ("confirmed", Verdict.SETTLED), ("pending", Verdict.IN_PROGRESS),
    ("ownershipVerificationRequired", Verdict.NEEDS_REVIEW), ("recipientInformationRequired", Verdict.NEEDS_REVIEW),
    ("void", Verdict.NEEDS_REVIEW), (None, Verdict.NEEDS_REVIEW), ("somethingNew", Verdict.NEEDS_REVIEW),
])
def test_settlement_of_withdrawal_statuses(status, verdict):
    settlement = withdrawal.workflow_rules().settlement[withdrawal.HISTORY_OPERATION]
    assert settlement.judge({"reconciledStatus": status}) is verdict


def test_balance_rule_refuses_a_shortfall_with_its_code():
    check = withdrawal.workflow_rules().after[withdrawal.BALANCES_OPERATION]
    refusal = check({"balances": BALANCES}, {"symbol": "USDC", "quantity": "101"})
    assert refusal is not None and refusal.code is ErrorCode.INSUFFICIENT_FUNDS
    assert check({"balances": BALANCES}, {"symbol": "USDC", "quantity": "100"}) is None


@pytest.mark.parametrize("inputs, code", [
    ({"symbol": "USDC", "quantity": "500", "blockchain": "Solana", "address": "Good"}, ErrorCode.LIMIT_EXCEEDED),
    ({"symbol": "USDC", "quantity": "5", "blockchain": "Solana", "address": "Elsewhere"},
     ErrorCode.DESTINATION_NOT_ALLOWED),
    ({"symbol": "USDC", "quantity": "5", "blockchain": "Ethereum", "address": "Good"},
     ErrorCode.DESTINATION_NOT_ALLOWED),
    ({"symbol": "USDC", "quantity": "100", "blockchain": "Solana", "address": "Good"}, None),
    ({"symbol": "SOL", "quantity": "1000", "blockchain": "Solana", "address": "Good"}, None),  # no cap for SOL
])
def test_worker_limits_are_checked_before_sending(inputs, code):
    rules = withdrawal.workflow_rules({"USDC": Decimal("100")}, frozenset({"Solana:Good"}))
    refusal = rules.before_send[withdrawal.WITHDRAW_OPERATION](None, inputs)
    assert (refusal.code if refusal else None) is code


def test_a_looked_up_withdrawal_is_compared_field_by_field_with_quantities_as_decimals():
    from bpx_worker.engine.engine import _differences

    fields = withdrawal.workflow_rules().lookup[withdrawal.WITHDRAW_OPERATION].fields
    sent = {"symbol": "USDC", "blockchain": "Solana", "address": "Mine", "quantity": "2.5", "clientId": "wd-k"}
    found = {"symbol": "USDC", "blockchain": "Solana", "toAddress": "Mine", "quantity": "2.50000000",
             "clientId": "wd-k"}
    assert _differences(sent, found, fields) == set()
    assert _differences(sent, {**found, "quantity": "25"}, fields) == {"quantity"}
    assert _differences(sent, {**found, "toAddress": "Theirs", "symbol": "SOL"}, fields) == {"address", "symbol"}
