"""The one withdrawal request model, shared by the Python API, the CLI and HTTP intake.

Money moves on the strength of these values, so they are checked at the edge,
before anything is written or sent:

* `parse_request(data, limits)` validates a plain mapping and raises
  `worker.errors.InvalidRequest({field: reason, ...})` naming every bad field;
* `WithdrawalRequest` is the validated, immutable result;
* `SafetyLimits` are operator-set caps applied after validation;
* `WithdrawalRequest.fingerprint()` is what an idempotency key is compared on.

The address is held to the format of its blockchain (addresses.py).

Every value that ends up in the signed request body (symbol, blockchain,
address, quantity, clientId from `idempotency_key`, the 2FA token) is held to
URL-safe characters, because the SDKs disagree on percent-encoding the signing
string (reference notes, section 1.4 "Consequence").

The module is pure: it reads the OpenAPI enums and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from bpx_worker.config.documents import blockchain_names, custody_assets
from bpx_worker.errors import InvalidRequest
from bpx_worker.withdrawal.addresses import ADDRESS_RULES, address_problem

SYMBOL_MAX = 32
ADDRESS_MAX = 128
QUANTITY_MAX_INTEGER_DIGITS = 20
QUANTITY_MAX_DECIMAL_PLACES = 18
WINDOW_MIN_MS = 1
WINDOW_MAX_MS = 60_000  # the exchange's documented X-Window maximum

# Explicit [0-9] rather than \d: Python's \d also matches other scripts' digits
# (e.g. Arabic-Indic), which Decimal() would happily accept.
_SYMBOL = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*")
_ADDRESS = re.compile(r"[A-Za-z0-9._-]+")
_QUANTITY = re.compile(r"([0-9]+)(?:\.([0-9]+))?")
_EXPONENT = re.compile(r"[0-9.]*[eE][+-]?[0-9]*")
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TWO_FACTOR_TOKEN = re.compile(r"[A-Za-z0-9]{1,64}")
_WINDOW_DIGITS = re.compile(r"[0-9]{1,6}")
_NON_FINITE = {"nan", "snan", "inf", "infinity"}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_TOO_MANY_INTEGER_DIGITS = f"must have at most {QUANTITY_MAX_INTEGER_DIGITS} integer digits"
_TOO_MANY_DECIMAL_PLACES = f"must have at most {QUANTITY_MAX_DECIMAL_PLACES} decimal places"

# Shown when a blockchain is unknown: a few well-known names, not all 32.
_EXAMPLE_CHAINS = ("Solana", "Ethereum", "Bitcoin", "Arbitrum", "Base")

# Fixed wording for the 2FA token: it never echoes the value, even in part.
TOKEN_REASON = "must be 1-64 letters or digits"  # noqa: S105 - a message, not a secret


def _reason(text: str) -> PydanticCustomError:
    """A validation failure whose message is exactly `text`.

    No context is passed, so pydantic does not format the template, and the
    message reaches `InvalidRequest` without pydantic's "Value error, " prefix.
    """
    return PydanticCustomError("withdrawal_request", text)


@lru_cache(maxsize=1)
def _assets_by_lower() -> dict[str, str]:
    # The 1601 symbols have no case-insensitive collisions, so a lower-case
    # lookup can suggest the right spelling ("usdc" -> "USDC").
    return {asset.lower(): asset for asset in custody_assets()}


@lru_cache(maxsize=1)
def _chains_by_lower() -> dict[str, str]:
    return {chain.lower(): chain for chain in blockchain_names()}


def _require_str(value: Any) -> str:
    if value is None:
        raise _reason("required")
    if not isinstance(value, str):
        raise _reason("must be a string")
    return value


def _parse_quantity_str(text: str) -> Decimal:
    """A positive plain decimal string -> its exact Decimal value."""
    if text == "":
        raise _reason("must not be empty")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise _reason(_quantity_format_problem(text))
    integer, fraction = match.group(1), match.group(2) or ""
    if len(integer) > QUANTITY_MAX_INTEGER_DIGITS:
        raise _reason(_TOO_MANY_INTEGER_DIGITS)
    if len(fraction) > QUANTITY_MAX_DECIMAL_PLACES:
        raise _reason(_TOO_MANY_DECIMAL_PLACES)
    value = Decimal(text)  # exact: construction from a string never rounds
    if value == 0:
        raise _reason("must be greater than zero")
    return value


def _quantity_format_problem(text: str) -> str:
    """Why `text` is not plain digits with an optional single dot, in words."""
    if text.strip().lstrip("+-").lower() in _NON_FINITE:
        return "must be a finite number"
    if any(ch.isspace() for ch in text):
        return "must not contain whitespace"
    if text.startswith("-"):
        return "must be greater than zero, written without a sign"
    if text.startswith("+"):
        return "must not have a '+' sign"
    if "_" in text:
        return "must not contain underscores"
    if _EXPONENT.fullmatch(text):
        return "must not use exponent notation"
    return "must be plain digits with at most one '.'"


class SafetyLimits(BaseModel, frozen=True):
    """Operator caps applied by `parse_request` after the request itself is valid."""

    # Per symbol; a symbol without an entry has no cap. Finite and >= 0, so the
    # comparison in parse_request can never raise on NaN.
    max_quantity: dict[str, Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]] = {}
    # None allows any destination. Otherwise entries are "Blockchain:address"
    # (that chain only) or a bare "address" (any chain).
    allowed_destinations: frozenset[str] | None = None


class WithdrawalRequest(BaseModel, frozen=True, extra="forbid"):
    """A validated withdrawal request. Immutable; the 2FA token is a SecretStr.

    Construct it through `parse_request` to get `InvalidRequest` (not pydantic's
    ValidationError) and to apply `SafetyLimits`.
    """

    symbol: str
    blockchain: str
    address: str
    quantity: Decimal
    idempotency_key: str | None = None
    two_factor_token: SecretStr | None = None
    window: int | None = None

    @field_validator("symbol", mode="before")
    @classmethod
    def _check_symbol(cls, value: Any) -> str:
        text = _require_str(value)
        if text == "":
            raise _reason("must not be empty")
        if len(text) > SYMBOL_MAX:
            raise _reason(f"must be at most {SYMBOL_MAX} characters")
        if not _SYMBOL.fullmatch(text):
            raise _reason("must be an asset code of letters and digits, optionally dot-separated (e.g. USDC, BRK.B.US)")
        if text not in custody_assets():
            # Safe to echo: the pattern above allows only letters, digits and dots.
            reason = f"unknown asset '{text}'"
            known = _assets_by_lower().get(text.lower())
            if known is not None:
                reason += f" (did you mean '{known}'?)"
            raise _reason(reason)
        return text

    @field_validator("blockchain", mode="before")
    @classmethod
    def _check_blockchain(cls, value: Any) -> str:
        text = _require_str(value)
        if text in blockchain_names():
            if text not in ADDRESS_RULES:
                # A chain added by a newer API description: refused until it has an address rule.
                raise _reason(f"'{text}' has no address rule in this worker yet")
            return text
        known = _chains_by_lower().get(text.lower())
        if known is not None:
            raise _reason(f"must be spelled exactly '{known}'")
        # The bad value is not echoed: it is arbitrary input.
        examples = ", ".join(_EXAMPLE_CHAINS)
        raise _reason(f"unknown blockchain; expected one of {examples}, ... ({len(blockchain_names())} in all)")

    @field_validator("address", mode="before")
    @classmethod
    def _check_address(cls, value: Any, info: ValidationInfo) -> str:
        text = _require_str(value)
        if text == "":
            raise _reason("must not be empty")
        if len(text) > ADDRESS_MAX:
            raise _reason(f"must be at most {ADDRESS_MAX} characters")
        if any(ch.isspace() for ch in text):
            raise _reason("must not contain whitespace")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            raise _reason("must not contain control characters")
        if not text.isascii():
            raise _reason("must be printable ASCII")
        # The address is signed; the SDKs disagree on percent-encoding, so only
        # URL-safe characters are sent. This also keeps ':' free as the
        # separator of "Blockchain:address" allow-list entries.
        if not _ADDRESS.fullmatch(text):
            raise _reason("must contain only letters, digits, '.', '_' and '-'")
        # `blockchain` is declared first, so it is here when it was valid; when it
        # was not, its own error is reported and the address has nothing to match.
        blockchain = info.data.get("blockchain")
        if blockchain is not None:
            problem = address_problem(blockchain, text)
            if problem is not None:
                raise _reason(problem)
        return text

    @field_validator("quantity", mode="before")
    @classmethod
    def _check_quantity(cls, value: Any) -> Decimal:
        # bool before int: True is an int in Python, and never a quantity.
        if isinstance(value, bool):
            raise _reason("must be a decimal string, not a boolean")
        if isinstance(value, float):
            # A float has already lost the exact amount the caller meant.
            raise _reason("must be a decimal string, not a float")
        if isinstance(value, str):
            return _parse_quantity_str(value)
        if isinstance(value, int):
            if value <= 0:
                raise _reason("must be greater than zero")
            # Bound before str(): a huge int would be slow (or refused) to print.
            if value >= 10**QUANTITY_MAX_INTEGER_DIGITS:
                raise _reason(_TOO_MANY_INTEGER_DIGITS)
            return Decimal(value)
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise _reason("must be a finite number")
            if value <= 0:
                raise _reason("must be greater than zero")
            # Same digit limits as a string, checked on the exponent so that
            # e.g. Decimal("1E+999999") is never expanded.
            if value.adjusted() >= QUANTITY_MAX_INTEGER_DIGITS:
                raise _reason(_TOO_MANY_INTEGER_DIGITS)
            exponent = value.as_tuple().exponent
            if isinstance(exponent, int) and -exponent > QUANTITY_MAX_DECIMAL_PLACES:
                raise _reason(_TOO_MANY_DECIMAL_PLACES)
            # Re-read the plain form so exponent forms like 1E+3 become 1000.
            return Decimal(format(value, "f"))
        if value is None:
            raise _reason("required")
        raise _reason("must be a decimal string")

    @field_validator("idempotency_key", mode="before")
    @classmethod
    def _check_idempotency_key(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _reason("must be a string")
        if value == "":
            raise _reason("must not be empty")
        if len(value) > 64:
            raise _reason("must be at most 64 characters")
        if not _IDEMPOTENCY_KEY.fullmatch(value):
            raise _reason("must contain only letters, digits, '_' and '-'")
        return value

    @field_validator("two_factor_token", mode="before")
    @classmethod
    def _check_two_factor_token(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        # One fixed reason whatever is wrong, so nothing about the value leaks.
        if not isinstance(value, str) or not _TWO_FACTOR_TOKEN.fullmatch(value):
            raise _reason(TOKEN_REASON)
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _check_window(cls, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise _reason("must be an integer, not a boolean")
        # A digit string is accepted because CLI arguments arrive as text.
        if isinstance(value, str) and _WINDOW_DIGITS.fullmatch(value):
            value = int(value)
        if not isinstance(value, int):
            raise _reason("must be a whole number of milliseconds")
        if not WINDOW_MIN_MS <= value <= WINDOW_MAX_MS:
            raise _reason(f"must be between {WINDOW_MIN_MS} and {WINDOW_MAX_MS} ms")
        return value

    def public_inputs(self) -> dict[str, str | int]:
        """The inputs safe to store with the job. Never includes the 2FA token.

        `quantity` is a plain decimal string (format 'f'), never exponent form.
        """
        inputs: dict[str, str | int] = {
            "symbol": self.symbol,
            "blockchain": self.blockchain,
            "address": self.address,
            "quantity": format(self.quantity, "f"),
        }
        if self.window is not None:
            inputs["window"] = self.window
        return inputs

    def fingerprint(self) -> dict[str, str | int | None]:
        """What makes two submissions under one idempotency key the same request.

        Symbol, blockchain, address, quantity and window; never the 2FA token
        (a secret, and a retry may carry a fresh one). Quantities compare by
        value: `1`, `1.0` and `1.000` are the same request.
        """
        return {
            "symbol": self.symbol,
            "blockchain": self.blockchain,
            "address": self.address,
            "quantity": canonical_quantity(self.quantity),
            "window": self.window,
        }


def canonical_quantity(quantity: Decimal) -> str:
    """One plain decimal string per numeric value: trailing zeros dropped, no exponent (`1.50` -> `1.5`)."""
    # Not Decimal.normalize(): it rounds to the context's 28 digits, and a
    # quantity may have 38. Formatting with 'f' is exact.
    text = format(quantity, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _field_label(loc: tuple[Any, ...]) -> str:
    """The errors-dict key for a pydantic error location."""
    if not loc:
        return "request"
    key = loc[0]
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    # An unknown key is caller input: keep it short and printable for logs.
    return repr(key)[:64]


def _translate(exc: ValidationError) -> dict[str, str]:
    """pydantic errors -> {field: short human reason}, first reason per field."""
    errors: dict[str, str] = {}
    # include_input=False: the raw input (possibly the token) is not even copied.
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        field = _field_label(error["loc"])
        kind = error["type"]
        if kind == "missing":
            reason = "required"
        elif kind == "extra_forbidden":
            reason = "unknown field"
        elif kind == "withdrawal_request":
            reason = error["msg"]
        else:
            # Not expected (every field has its own validator); stay generic
            # rather than pass pydantic's wording through.
            reason = "is invalid"
        errors.setdefault(field, reason)
    return errors


def _limit_errors(request: WithdrawalRequest, limits: SafetyLimits) -> dict[str, str]:
    errors: dict[str, str] = {}
    cap = limits.max_quantity.get(request.symbol)
    if cap is not None and request.quantity > cap:
        errors["quantity"] = f"exceeds the per-job limit of {format(cap, 'f')} {request.symbol}"
    allowed = limits.allowed_destinations
    if allowed is not None:
        qualified = f"{request.blockchain}:{request.address}"
        if qualified not in allowed and request.address not in allowed:
            errors["address"] = "not on the destination allow-list"
    return errors


def parse_request(data: Mapping[str, Any], limits: SafetyLimits | None = None) -> WithdrawalRequest:
    """Validate `data` into a WithdrawalRequest, then apply `limits`.

    Raises `InvalidRequest` naming every bad field and why. Limits are checked
    only once the request itself is valid, since they need a valid symbol and
    quantity. Writes and sends nothing.
    """
    if not isinstance(data, Mapping):
        raise InvalidRequest({"request": "must be a mapping of field names to values"})
    errors: dict[str, str] = {}
    try:
        request = WithdrawalRequest.model_validate(dict(data))
    except ValidationError as exc:
        errors = _translate(exc)
    # Raised outside the except block so the ValidationError, whose text holds
    # the raw inputs, is neither the cause nor the context of InvalidRequest.
    if errors:
        raise InvalidRequest(errors)
    if limits is not None:
        errors = _limit_errors(request, limits)
        if errors:
            raise InvalidRequest(errors)
    return request
