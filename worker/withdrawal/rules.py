"""Rules of the withdrawal itself, beyond what the Arazzo document says. All pure.

`workflow_rules` is the small table the engine applies by operationId: the
balance rule after `get_balances`, this worker's own limits before
`request_withdrawal` is sent, which `get_withdrawals` statuses are settled, and
how a withdrawal whose answer was lost is found again (by clientId), that
a job record keeps only the checked symbol's balance, and that the balance read
is account-wide (jobs may share one within a short freshness window).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from bpx_worker.engine.rules import Check, Lookup, Refusal, Rules, Settlement
from bpx_worker.jobs.record import ErrorCode

CONFIRMED = "confirmed"
IN_PROGRESS = frozenset({"pending"})

BALANCES_OPERATION = "get_balances"
WITHDRAW_OPERATION = "request_withdrawal"
HISTORY_OPERATION = "get_withdrawals"


def available(balances: Any, symbol: str) -> Decimal:
    """Available balance of `symbol`; a symbol missing from the balances counts as zero."""
    if not isinstance(balances, Mapping):
        return Decimal(0)
    entry = balances.get(symbol)
    if not isinstance(entry, Mapping):
        return Decimal(0)
    try:
        return Decimal(str(entry.get("available", "0")))
    except InvalidOperation:
        return Decimal(0)


def shortfall(balances: Any, symbol: str, quantity: Decimal) -> str | None:
    """Why the balance cannot cover the withdrawal, or None when it can."""
    have = available(balances, symbol)
    if have < quantity:
        return f"available {symbol} balance {have} is below the requested {quantity}"
    return None


def _balance_covers_quantity(outputs: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> Refusal | None:
    problem = shortfall((outputs or {}).get("balances"), inputs["symbol"], Decimal(inputs["quantity"]))
    if problem:
        return Refusal(ErrorCode.INSUFFICIENT_FUNDS, problem + " (checked before sending)")
    return None


def _checked_balance_only(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The record keeps the checked symbol's available balance, not the account's whole balance sheet."""
    symbol = inputs["symbol"]
    return {**outputs, "balances": {symbol: {"available": str(available(outputs.get("balances"), symbol))}}}


def within_limits(max_quantity: Mapping[str, Decimal], allowed_destinations: frozenset[str] | None) -> Check:
    """A check of a job's inputs against this worker's own limits, applied right before the request is sent.

    The submitting process checks the same limits, but it may run with other
    settings: limits are enforced where the money moves.
    """

    def check(_: Mapping[str, Any] | None, inputs: Mapping[str, Any]) -> Refusal | None:
        symbol, quantity = inputs["symbol"], Decimal(inputs["quantity"])
        cap = max_quantity.get(symbol)
        if cap is not None and quantity > cap:
            return Refusal(ErrorCode.LIMIT_EXCEEDED,
                           f"{quantity} {symbol} exceeds this worker's per-job limit of {format(cap, 'f')} {symbol}")
        if allowed_destinations is not None:
            address = inputs["address"]
            if f"{inputs['blockchain']}:{address}" not in allowed_destinations and address not in allowed_destinations:
                return Refusal(ErrorCode.DESTINATION_NOT_ALLOWED,
                               f"{inputs['blockchain']} address {address} is not on this worker's allow-list")
        return None

    return check


def workflow_rules(max_quantity: Mapping[str, Decimal] | None = None,
                   allowed_destinations: frozenset[str] | None = None) -> Rules:
    """The withdrawal's rules for the engine, with this worker's limits."""
    return Rules(
        after={BALANCES_OPERATION: _balance_covers_quantity},
        before_send={WITHDRAW_OPERATION: within_limits(max_quantity or {}, allowed_destinations)},
        keep={BALANCES_OPERATION: _checked_balance_only},
        settlement={HISTORY_OPERATION: Settlement("reconciledStatus", frozenset({CONFIRMED}), IN_PROGRESS)},
        lookup={WITHDRAW_OPERATION: Lookup(
            HISTORY_OPERATION, key="clientId",
            fields={"symbol": "symbol", "blockchain": "blockchain", "quantity": "quantity", "address": "toAddress"},
        )},
        log_ids={"withdrawalId": "withdrawal_id"},
        account_reads=frozenset({BALANCES_OPERATION}),
    )


# The keys the request model accepts. Only these are written out plainly.
PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
PLAIN_PREFIX = "wd-"
# Starts "wdh", which no plain form can: every plain form starts "wd-".
HASHED_PREFIX = "wdh-"


def client_id(idempotency_key: str) -> str:
    """The withdrawal's clientId: URL-safe, stable for the key, and different for every key.

    A key the request model accepts is written out plainly, `wd-<key>` (at most
    67 characters); any other key becomes `wdh-<sha256 of its UTF-8, 64 hex>`.
    The two forms cannot meet (their third characters differ), the plain form
    is one-to-one, and the hash is kept whole, so two keys share a clientId only
    if SHA-256 collides. The exchange allows 255 characters.
    """
    if PLAIN_KEY.fullmatch(idempotency_key):
        return PLAIN_PREFIX + idempotency_key
    return HASHED_PREFIX + hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()
