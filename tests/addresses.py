"""Destination addresses for tests: valid for their chain, controlled by nobody."""

from __future__ import annotations

import hashlib
import secrets

import base58


def solana_address(seed: str | None = None) -> str:
    """A Solana address: 32 random bytes in base58 (the same bytes for the same `seed`)."""
    raw = hashlib.sha256(seed.encode()).digest() if seed is not None else secrets.token_bytes(32)
    return base58.b58encode(raw).decode()
