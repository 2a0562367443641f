"""The payout file: CSV with a header, or JSON Lines; one payout per row. Pure: reads bytes, writes nothing.

Columns (CSV header, or the keys of each JSON object), all required, no others:

    key         the payout's own stable id, unique in the file ([A-Za-z0-9_.-], at most 64)
    symbol      asset, e.g. USDC
    blockchain  e.g. Solana
    address     destination; must be 2FA-exempt in the account's address book
    quantity    plain decimal, e.g. 12.5 (a JSON number is read exactly, never as a float)

There is no two-factor token column: a one-time token expires long before a
nightly run, so batches pay only 2FA-exempt addresses.

`parse_payout_file` validates every row with the one withdrawal request model
(`parse_request`, with the operator's limits) and reports every bad row with
its line number, field and reason. The file's identity is the SHA-256 of its
bytes: the same bytes are a re-run of the same file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal

from bpx_worker.errors import InvalidRequest
from bpx_worker.withdrawal.request import SafetyLimits, WithdrawalRequest, parse_request

COLUMNS = ("key", "symbol", "blockchain", "address", "quantity")
REQUEST_FIELDS = COLUMNS[1:]
MAX_ROWS = 100_000
ROW_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Any column that looks like it carries a two-factor token is refused by name.
_TOKEN_COLUMN = re.compile(r"token|2fa|two.?factor|otp", re.IGNORECASE)
NO_TOKEN = "not allowed: batches pay only 2FA-exempt addresses, so a payout file carries no two-factor token"  # noqa: S105

Format = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class RowError:
    """One problem of the file: line 1 is the CSV header; field `file` is about the whole file."""

    line: int
    field: str
    reason: str


@dataclass(frozen=True)
class PayoutRow:
    line: int
    key: str
    request: WithdrawalRequest

    @property
    def symbol(self) -> str:
        return self.request.symbol

    @property
    def quantity(self) -> Decimal:
        return self.request.quantity

    def fingerprint(self) -> dict[str, str]:
        """What the row pays: compared with what its key paid before (quantity by value: 12.50 == 12.5)."""
        return {
            "symbol": self.request.symbol,
            "blockchain": self.request.blockchain,
            "address": self.request.address,
            "quantity": plain(self.request.quantity),
        }


@dataclass(frozen=True)
class PayoutFile:
    name: str
    format: Format
    sha256: str
    rows: list[PayoutRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def bad_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors})

    def totals(self) -> dict[str, Decimal]:
        """Sum of the valid rows' quantities, per symbol."""
        return totals(self.rows)


def totals(rows: list[PayoutRow]) -> dict[str, Decimal]:
    result: dict[str, Decimal] = {}
    for row in rows:
        result[row.symbol] = result.get(row.symbol, Decimal(0)) + row.quantity
    return dict(sorted(result.items()))


def plain(value: Decimal) -> str:
    """A decimal as plain text without exponent or trailing zeros: 12.50 -> 12.5, 1E+2 -> 100."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def detect_format(name: str, data: bytes) -> Format:
    suffix = PurePath(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "jsonl" if data.lstrip()[:1] == b"{" else "csv"


def parse_payout_file(name: str, data: bytes, limits: SafetyLimits | None = None,
                      file_format: Format | None = None) -> PayoutFile:
    """Read and validate a whole payout file; every bad row is reported, none is dropped silently."""
    kind = file_format or detect_format(name, data)
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return PayoutFile(name, kind, digest, errors=[RowError(0, "file", f"not UTF-8 text (byte {exc.start})")])
    rows: list[PayoutRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    raw_rows = _csv_rows(text, errors) if kind == "csv" else _jsonl_rows(text, errors)
    for count, (line, raw) in enumerate(raw_rows, start=1):
        if count > MAX_ROWS:
            errors.append(RowError(line, "file", f"more than {MAX_ROWS} rows; split the file"))
            break
        row = _row(line, raw, limits, errors)
        if row is None:
            continue
        first = seen.setdefault(row.key, line)
        if first != line:
            errors.append(RowError(line, "key", f"duplicate of line {first}: a key is unique in the file"))
            continue
        rows.append(row)
    if not rows and not errors:
        errors.append(RowError(0, "file", "no payout rows"))
    return PayoutFile(name, kind, digest, rows, sorted(errors, key=lambda e: (e.line, e.field)))


def _header_errors(columns: list[str], line: int) -> list[RowError]:
    errors = [RowError(line, name, "missing column") for name in COLUMNS if name not in columns]
    for name in columns:
        if name in COLUMNS:
            if columns.count(name) > 1:
                errors.append(RowError(line, name, "column given twice"))
        elif _TOKEN_COLUMN.search(name):
            errors.append(RowError(line, name, NO_TOKEN))
        else:
            errors.append(RowError(line, name or "(empty)", f"unknown column; expected {', '.join(COLUMNS)}"))
    return sorted(set(errors), key=lambda e: (e.line, e.field))


def _csv_rows(text: str, errors: list[RowError]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [c.strip() for c in header]
        problems = _header_errors(columns, reader.line_num)
        if problems:
            errors.extend(problems)
            return
        start = reader.line_num + 1
        for cells in reader:
            line = start
            start = reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(cells) != len(columns):
                errors.append(RowError(line, "row", f"has {len(cells)} fields, the header has {len(columns)}"))
                continue
            yield line, {name: cell.strip() for name, cell in zip(columns, cells, strict=True)}
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, "row", f"not valid CSV: {exc}"))


def _jsonl_rows(text: str, errors: list[RowError]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, parse_float=Decimal)  # exact: a JSON number is never a float here
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, "row", f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(value, dict):
            errors.append(RowError(number, "row", "must be a JSON object"))
            continue
        problems = [e for e in _header_errors(list(value), number) if e.reason != "missing column"]
        missing = [RowError(number, name, "required") for name in COLUMNS if name not in value]
        if problems or missing:
            errors.extend(problems + missing)
            continue
        yield number, value


def _row(line: int, raw: Mapping[str, Any], limits: SafetyLimits | None, errors: list[RowError]) -> PayoutRow | None:
    key = raw.get("key")
    bad: list[RowError] = []
    if not isinstance(key, str) or not ROW_KEY.fullmatch(key):
        bad.append(RowError(line, "key", "must be 1-64 letters, digits, '.', '_' or '-'"))
    request: WithdrawalRequest | None = None
    try:
        request = parse_request({name: raw.get(name) for name in REQUEST_FIELDS}, limits)
    except InvalidRequest as exc:
        bad.extend(RowError(line, name, reason) for name, reason in exc.errors.items())
    if bad or request is None:
        errors.extend(bad)
        return None
    return PayoutRow(line, str(key), request)
