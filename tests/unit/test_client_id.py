"""The clientId derived from an idempotency key: stable, URL-safe and different for every key."""

from __future__ import annotations

import hashlib
import re

import pytest

from bpx_worker.withdrawal import rules
from bpx_worker.withdrawal.request import parse_request

URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")
CLIENT_ID_MAX = 255  # the exchange's maxLength for clientId


def _old_client_id(key: str) -> str:
    """The rule this one replaced: plain up to 60 characters, else 40 hex digits of a hash, same prefix."""
    if all(c.isascii() and (c.isalnum() or c in "-_") for c in key) and len(key) <= 60:
        return f"wd-{key}"
    return "wd-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def test_the_collision_the_old_rule_allowed_is_gone():
    # A key that is not URL-safe was hashed to wd-<40 hex>; another caller's plain
    # key made of those 40 hex digits produced the very same clientId, so after an
    # ambiguous POST one job could adopt the other's withdrawal.
    hashed_key = "payout 42"
    plain_key = hashlib.sha256(hashed_key.encode()).hexdigest()[:40]
    assert _old_client_id(hashed_key) == _old_client_id(plain_key)  # the defect, reproduced
    assert rules.client_id(hashed_key) != rules.client_id(plain_key)


@pytest.mark.parametrize("key", ["h-" + "a" * 62, "h", "h-", "wdh-x", "-" * 64])
def test_a_plain_key_can_never_spell_a_hashed_form(key):
    # Plain forms start "wd-", hashed forms "wdh-": they differ at the third character.
    assert rules.client_id(key).startswith("wd-")
    assert not rules.client_id(key).startswith("wdh-")
    assert rules.client_id("payout 42").startswith("wdh-")


@pytest.mark.parametrize("key", ["abc", "payout-2026-11-25_1", "x" * 60, "y" * 61, "z" * 64, "-", "_"])
def test_every_key_the_request_model_accepts_is_written_plainly(key):
    assert parse_request({"symbol": "USDC", "blockchain": "Solana", "quantity": "1", "idempotency_key": key,
                          "address": "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"}).idempotency_key == key
    assert rules.client_id(key) == f"wd-{key}"


@pytest.mark.parametrize("key", ["has space", "x" * 65, "ümlaut", "a/b", "a.b", "", "abc\n", "\ud800"])
def test_other_keys_are_hashed_whole(key):
    cid = rules.client_id(key)
    assert cid == "wdh-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    assert cid == rules.client_id(key)


def test_client_ids_are_distinct_over_many_keys_of_both_forms():
    keys = [f"k{i}" for i in range(2000)] + [f"k {i}" for i in range(2000)]
    keys += [hashlib.sha256(f"k {i}".encode()).hexdigest()[:n] for i in range(200) for n in (40, 64)]
    assert len({rules.client_id(k) for k in keys}) == len(set(keys))


@pytest.mark.parametrize("key", ["k", "z" * 64, "has space", "ümlaut" * 20])
def test_client_ids_are_url_safe_and_within_the_exchange_limit(key):
    cid = rules.client_id(key)
    assert URL_SAFE.fullmatch(cid) and len(cid) <= CLIENT_ID_MAX
