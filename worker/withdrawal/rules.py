"""Rules of the withdrawal itself, beyond what the Arazzo document says. All pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

# Steps of the workflow that the rules below attach to.
BALANCE_STEP = "getBalances"
REQUEST_STEP = "requestWithdrawal"
RECONCILE_STEP = "reconcileWithdrawal"

CONFIRMED = "confirmed"
IN_PROGRESS = frozenset({"pending"})


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


def client_id(idempotency_key: str) -> str:
    """The withdrawal's clientId: URL-safe, stable for the key, at most 64 characters."""
    if all(c.isascii() and (c.isalnum() or c in "-_") for c in idempotency_key) and len(idempotency_key) <= 60:
        return f"wd-{idempotency_key}"
    return "wd-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


Settlement = Literal["confirmed", "in_progress", "needs_review"]


def settlement(status: Any) -> Settlement:
    """What a withdrawal status means for the job. Unknown statuses need a human, never a crash."""
    if isinstance(status, str) and status == CONFIRMED:
        return "confirmed"
    if isinstance(status, str) and status in IN_PROGRESS:
        return "in_progress"
    return "needs_review"
