"""Destination address formats, one rule per blockchain of the OpenAPI `Blockchain` enum. Pure.

A withdrawal sent to a string that is not an address of its chain is at best
refused by the exchange and at worst lost, so the request model checks the
address against its chain before anything is written:

* `address_problem(blockchain, address)` -> None, or why the address is not
  one of that chain's;
* `ADDRESS_RULES` maps every supported chain to its rule; a chain without a
  rule (an enum value added by a newer API description) is refused.

Checksums are verified wherever the format has one (base58check, bech32,
bech32m, CashAddr, EIP-55 on mixed-case hex). The codecs come from `base58`
(Bitcoin and Ripple alphabets), `bech32m` (Pieter Wuille's reference code for
BIP-173/350) and `pycryptodome` (Keccak-256 for EIP-55). CashAddr, Cardano's
long bech32 strings and Byron's CBOR envelope have no well-kept Python codec,
so their few lines are here, written from their specifications.

The caller has already held the address to URL-safe ASCII (request.py);
rules here only decide whether it is an address of the chain.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import base58
import bech32m
from bech32m import codecs as bech32_codecs
from Crypto.Hash import keccak

Check = Callable[[str], "str | None"]


@dataclass(frozen=True)
class AddressRule:
    """How one chain writes its addresses: `describe` is for people, `check` returns a reason or None."""

    describe: str
    check: Check
    # False when the chain has no address format this worker can define (a
    # payment rail rather than a ledger): only the generic syntax check applies.
    well_defined: bool = True


# --- shared codecs ---------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-fA-F]+")


def _base58check(address: str, alphabet: bytes = base58.BITCOIN_ALPHABET) -> bytes | None:
    """The payload (version bytes included) of a base58check string, or None."""
    try:
        return base58.b58decode_check(address, alphabet=alphabet)
    except ValueError:  # bad character or checksum
        return None


def _versioned(address: str, versions: Mapping[bytes, str], size: int = 20,
               alphabet: bytes = base58.BITCOIN_ALPHABET) -> str | None:
    """None when `address` is base58check with one of `versions` and a `size`-byte hash."""
    raw = _base58check(address, alphabet)
    if raw is None:
        return "has a bad base58check checksum or character"
    for version in versions:
        if raw.startswith(version) and len(raw) == len(version) + size:
            if raw[len(version):] == bytes(size):
                return "is the all-zero hash, which nobody controls"
            return None
    return "is base58check but not an address of this chain (wrong version byte or length)"


def _segwit(address: str, hrp: str) -> str | None:
    """None for a native segwit address on `hrp`: v0 (20 or 32 bytes, bech32) or v1 taproot (32, bech32m)."""
    try:
        decoded = bech32m.decode(hrp, address)
    except bech32m.DecodeError:
        return f"is not a valid {hrp}1... segwit address (bech32/bech32m checksum, prefix or length)"
    if decoded.witver == 0 or (decoded.witver == 1 and len(decoded.witprog) == 32):
        return None
    # Later witness versions are valid strings, but anyone can spend coins sent to them today.
    return f"uses witness version {decoded.witver}, which no wallet can spend yet"


def _long_bech32(address: str, hrp: str) -> bytes | None:
    """Data bytes of a bech32 (BIP-173 checksum) string of any length with prefix `hrp`, or None.

    The reference `bech32m.decode` stops at 90 characters (a segwit limit);
    Cardano and Cosmos addresses use the same checksum on longer strings.
    """
    if address.lower() != address and address.upper() != address:
        return None
    text = address.lower()
    if not text.startswith(hrp + "1"):
        return None
    data = text[len(hrp) + 1:]
    if len(data) < 6 or any(ch not in bech32_codecs.CHARSET for ch in data):
        return None
    values = bytes(bech32_codecs.CHARSET.index(ch) for ch in data)
    try:
        if bech32_codecs.bech32_verify_checksum(hrp, values) is not bech32_codecs.Encoding.BECH32:
            return None
        return bytes(bech32_codecs.convertbits(values[:-6], 5, 8, False))
    except bech32m.DecodeError:
        return None


# --- EVM ----------------------------------------------------------------------------------------

_EVM = re.compile(r"0x[0-9a-fA-F]{40}")


def _eip55(hex40: str) -> str:
    """The EIP-55 mixed-case form of 40 hex digits."""
    lower = hex40.lower()
    digest = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
    return "".join(ch.upper() if int(nibble, 16) >= 8 else ch for ch, nibble in zip(lower, digest[:40], strict=True))


def evm(address: str) -> str | None:
    """20-byte hex with 0x; mixed case must be the EIP-55 checksum, all-lower or all-upper has none."""
    if not _EVM.fullmatch(address):
        return "must be 0x followed by 40 hex digits (a 20-byte EVM address)"
    digits = address[2:]
    if digits != digits.lower() and digits != digits.upper() and digits != _eip55(digits):
        return "fails its EIP-55 checksum (a mixed-case address must match it exactly)"
    if int(digits, 16) == 0:
        return "is the zero address, which nobody controls"
    return None


# --- Solana and the SVM chains --------------------------------------------------------------------


def solana(address: str) -> str | None:
    """A base58 public key of exactly 32 bytes (32 to 44 characters)."""
    if not 32 <= len(address) <= 44:
        return "must be a base58 public key of 32 bytes (32 to 44 characters)"
    try:
        raw = base58.b58decode(address)
    except ValueError:
        return "must be base58 (no 0, O, I or l)"
    if len(raw) != 32:
        return "must be a base58 public key of 32 bytes (32 to 44 characters)"
    if raw == bytes(32):
        return "is the all-zero key (the system program), which nobody controls"
    return None


# --- UTXO chains ------------------------------------------------------------------------------------


def bitcoin(address: str) -> str | None:
    """P2PKH `1...`, P2SH `3...`, segwit v0 `bc1q...` or taproot `bc1p...`."""
    if address[:3].lower() == "bc1":
        return _segwit(address, "bc")
    return _versioned(address, {b"\x00": "P2PKH", b"\x05": "P2SH"})


def litecoin(address: str) -> str | None:
    """P2PKH `L...`, P2SH `M...` (or the older `3...`), segwit `ltc1...`."""
    if address[:4].lower() == "ltc1":
        return _segwit(address, "ltc")
    return _versioned(address, {b"\x30": "P2PKH", b"\x32": "P2SH", b"\x05": "P2SH (legacy)"})


def dogecoin(address: str) -> str | None:
    """P2PKH `D...`, P2SH `9...`/`A...`."""
    return _versioned(address, {b"\x1e": "P2PKH", b"\x16": "P2SH"})


def zcash(address: str) -> str | None:
    """Transparent `t1...` (P2PKH) or `t3...` (P2SH). Shielded and unified addresses are not accepted."""
    return _versioned(address, {b"\x1c\xb8": "P2PKH", b"\x1c\xbd": "P2SH"})


# CashAddr (the Bitcoin Cash address format spec): a BCH-code checksum of 40 bits.
_CASHADDR_GENERATORS = (0x98F2BC8E61, 0x79B76D99E2, 0xF33E5FB3C4, 0xAE2EABE2A8, 0x1E4F43E470)
_CASHADDR_PREFIX = "bitcoincash"
# version byte -> payload size: P2PKH 20 bytes, P2SH 20 bytes, P2SH32 32 bytes (2023 upgrade).
_CASHADDR_VERSIONS = {0x00: 20, 0x08: 20, 0x0B: 32}


def _cashaddr_polymod(values: bytes) -> int:
    check = 1
    for value in values:
        top = check >> 35
        check = ((check & 0x07FFFFFFFF) << 5) ^ value
        for bit, generator in enumerate(_CASHADDR_GENERATORS):
            if (top >> bit) & 1:
                check ^= generator
    return check ^ 1


def bitcoin_cash(address: str) -> str | None:
    """CashAddr `q...` (P2PKH) or `p...` (P2SH), written without the `bitcoincash:` prefix."""
    bad = ("must be a CashAddr without the 'bitcoincash:' prefix (q... or p...); legacy 1.../3... addresses "
           "are refused because they cannot be told apart from Bitcoin addresses")
    if address.lower() != address and address.upper() != address:
        return bad
    text = address.lower()
    if text[:1] not in ("q", "p") or any(ch not in bech32_codecs.CHARSET for ch in text):
        return bad
    values = bytes(bech32_codecs.CHARSET.index(ch) for ch in text)
    prefix = bytes(ord(ch) & 0x1F for ch in _CASHADDR_PREFIX) + b"\x00"
    if len(values) <= 8 or _cashaddr_polymod(prefix + values) != 0:
        return "has a bad CashAddr checksum"
    try:
        payload = bytes(bech32_codecs.convertbits(values[:-8], 5, 8, False))
    except bech32m.DecodeError:
        return bad
    if _CASHADDR_VERSIONS.get(payload[0]) != len(payload) - 1:
        return "is a CashAddr of a type or length this worker does not send to"
    return None


# --- other ledgers --------------------------------------------------------------------------------


def tron(address: str) -> str | None:
    """base58check of 0x41 and a 20-byte hash: `T...`, 34 characters."""
    return _versioned(address, {b"\x41": "account"})


def xrp(address: str) -> str | None:
    """A classic address `r...`: base58check in the Ripple alphabet, version 0, 20-byte account id."""
    if not address.startswith("r"):
        return "must be a classic XRP address (r...); X-addresses are not accepted"
    return _versioned(address, {b"\x00": "account"}, alphabet=base58.XRP_ALPHABET)


# CIP-19 Shelley header types that pay to a key or script: base (0-3, 57 bytes), enterprise (6, 7, 29 bytes).
_SHELLEY_LENGTHS = {0: 57, 1: 57, 2: 57, 3: 57, 6: 29, 7: 29}
_SHELLEY_MAINNET = 1


def _byron(raw: bytes) -> bool:
    """A Byron address: CBOR [tag 24 (bytes payload), uint crc32(payload)]."""
    if raw[:3] != b"\x82\xd8\x18":
        return False
    head, rest = raw[3], raw[4:]
    if 0x40 <= head <= 0x57:
        size = head - 0x40
    elif head == 0x58 and rest:
        size, rest = rest[0], rest[1:]
    elif head == 0x59 and len(rest) >= 2:
        size, rest = int.from_bytes(rest[:2], "big"), rest[2:]
    else:
        return False
    payload, tail = rest[:size], rest[size:]
    if len(payload) != size or len(tail) != 5 or tail[0] != 0x1A:  # crc32 as a 4-byte CBOR uint
        return False
    return int.from_bytes(tail[1:], "big") == zlib.crc32(payload)


def cardano(address: str) -> str | None:
    """Shelley mainnet `addr1...` (base or enterprise, CIP-19) or a Byron address (`Ae2...`, `DdzFF...`)."""
    if address.lower().startswith("addr1"):
        raw = _long_bech32(address, "addr")
        if raw is None:
            return "is not a valid addr1... address (bech32 checksum or characters)"
        kind, network = raw[0] >> 4, raw[0] & 0x0F
        if network != _SHELLEY_MAINNET:
            return "is not a mainnet address"
        if _SHELLEY_LENGTHS.get(kind) != len(raw):
            return "is not a base or enterprise payment address (CIP-19 header or length)"
        return None
    try:
        raw = base58.b58decode(address)
    except ValueError:
        raw = b""
    if not _byron(raw):
        return "must be a Shelley address (addr1...) or a Byron address (base58 with its CBOR checksum)"
    return None


_NEAR_NAMED = re.compile(r"(?:[a-z0-9]+[-_])*[a-z0-9]+(?:\.(?:[a-z0-9]+[-_])*[a-z0-9]+)*")
_NEAR_IMPLICIT = re.compile(r"[0-9a-f]{64}|0x[0-9a-f]{40}")


def near(address: str) -> str | None:
    """A named account (`alice.near`, 2-64 characters), an implicit account (64 lowercase hex) or `0x` + 40."""
    if _NEAR_IMPLICIT.fullmatch(address):
        return None
    if 2 <= len(address) <= 64 and _NEAR_NAMED.fullmatch(address):
        return None
    return ("must be a NEAR account id: 2-64 lowercase letters, digits and - _ separated by dots, "
            "or an implicit account (64 lowercase hex digits)")


def _hex32(chain: str) -> Check:
    def check(address: str) -> str | None:
        digits = address[2:]
        if address[:2] != "0x" or len(digits) != 64 or not _HEX.fullmatch(digits):
            return f"must be 0x followed by 64 hex digits (a 32-byte {chain} address)"
        if int(digits, 16) == 0:
            return "is the zero address, which nobody controls"
        return None

    return check


def sei(address: str) -> str | None:
    """Either form of a Sei account: EVM `0x...` or Cosmos bech32 `sei1...` (20 or 32 bytes)."""
    if address.lower().startswith("sei1"):
        raw = _long_bech32(address, "sei")
        if raw is None or len(raw) not in (20, 32):
            return "is not a valid sei1... address (bech32 checksum, characters or length)"
        return None
    return evm(address)


def generic(_: str) -> str | None:
    """No format to check beyond the request model's syntax rules."""
    return None


# --- the table --------------------------------------------------------------------------------------

_EVM_RULE = AddressRule("EVM: 0x + 40 hex digits, EIP-55 checksum when mixed case", evm)
_SVM_RULE = AddressRule("base58, 32 bytes (a Solana public key)", solana)

ADDRESS_RULES: Mapping[str, AddressRule] = {
    **{chain: _EVM_RULE for chain in (
        "0G", "Arbitrum", "Avalanche", "Base", "Berachain", "Bsc", "Ethereum", "HyperEVM", "Hyperliquid",
        "Linea", "Monad", "Optimism", "Plasma", "Polygon", "Stable", "Story",
    )},
    **{chain: _SVM_RULE for chain in ("Solana", "Eclipse", "Fogo")},
    "Bitcoin": AddressRule("base58check 1.../3..., bech32 bc1q..., bech32m bc1p... (taproot)", bitcoin),
    "Litecoin": AddressRule("base58check L.../M.../3..., bech32 ltc1...", litecoin),
    "Dogecoin": AddressRule("base58check D.../9.../A...", dogecoin),
    "BitcoinCash": AddressRule("CashAddr q.../p... without the bitcoincash: prefix", bitcoin_cash),
    "Zcash": AddressRule("transparent base58check t1.../t3...", zcash),
    "Tron": AddressRule("base58check T..., version 0x41, 20 bytes", tron),
    "XRP": AddressRule("classic address r..., Ripple-alphabet base58check", xrp),
    "Cardano": AddressRule("Shelley addr1... (bech32) or Byron (base58 + CBOR crc32)", cardano),
    "Near": AddressRule("named account (a.near) or implicit (64 hex)", near),
    "Aptos": AddressRule("0x + 64 hex digits", _hex32("Aptos")),
    "Sui": AddressRule("0x + 64 hex digits", _hex32("Sui")),
    "Sei": AddressRule("EVM 0x... or bech32 sei1...", sei),
    "EqualsMoney": AddressRule("not defined (a fiat payment rail): the generic syntax check only", generic,
                               well_defined=False),
}


def address_problem(blockchain: str, address: str) -> str | None:
    """Why `address` is not an address of `blockchain`, or None when it is one."""
    rule = ADDRESS_RULES.get(blockchain)
    if rule is None:
        return f"no address format is known for blockchain {blockchain}"
    problem = rule.check(address)
    if problem is None:
        return None
    return f"not a valid {blockchain} address: {problem}"
