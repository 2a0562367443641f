"""One idempotency key, one request, one job: over the real stack of conftest.py.

A private Redis, the sandbox over HTTP and a real Celery worker process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from bpx_worker.errors import IdempotencyConflict
from bpx_worker.exchange.ratelimit import PREFIX as RATE_PREFIX
from bpx_worker.interfaces.api import submit_withdrawal, wait_for
from bpx_worker.jobs.store import ACTIVE_INDEX, JOBS_INDEX, RedisJobStore, events_key, idem_key, job_key
from bpx_worker.withdrawal import rules
from tests.addresses import solana_address
from tests.integration.test_edge_and_secrets import _idle, _ledger_counts, _written, redis_dump

ROOT = Path(__file__).resolve().parents[2]


def _key() -> str:
    return f"payout-{uuid.uuid4().hex[:12]}"


def _bpxw(store) -> dict[str, str]:
    """Every job-store key and its whole value (not the rate limiter's, which changes on its own)."""
    return {k: v for k, v in redis_dump(store.redis).items() if k.startswith("bpxw:") and not k.startswith(RATE_PREFIX)}


# --- same key, same request -------------------------------------------------------------------


def test_same_key_and_same_request_return_the_same_job_even_with_quantity_written_differently(stack, sandbox):
    key, address = _key(), solana_address()
    first = submit_withdrawal("USDC", "Solana", address, "1.50", idempotency_key=key)
    again = submit_withdrawal("USDC", "Solana", address, "1.5", idempotency_key=key)
    assert again == first
    record = wait_for(first, timeout=60)
    assert record.state == "succeeded", record.error
    # After the job ended the key still answers with it, and nothing is sent again.
    assert submit_withdrawal("USDC", "Solana", address, "1.500000", idempotency_key=key) == first
    assert len(sandbox.withdrawals(rules.client_id(key))) == 1


def test_the_key_keeps_the_request_fingerprint_and_never_the_token(stack, sandbox, store):
    key, address, token = _key(), solana_address(), "424242"
    job_id = submit_withdrawal("USDC", "Solana", address, "2.0", idempotency_key=key, two_factor_token=token,
                               window=5000)
    assert store.redis.hgetall(idem_key(key)) == {
        "job": job_id,
        "request": json.dumps({"address": address, "blockchain": "Solana", "quantity": "2", "symbol": "USDC",
                               "window": 5000}, sort_keys=True, separators=(",", ":")),
    }
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert token not in json.dumps(store.redis.hgetall(idem_key(key)))


# --- same key, different request ----------------------------------------------------------------


def test_same_key_with_a_different_request_is_refused_naming_the_fields_and_writes_nothing(stack, sandbox, store):
    key, address = _key(), solana_address()
    job_id = submit_withdrawal("USDC", "Solana", address, "1", idempotency_key=key)
    assert wait_for(job_id, timeout=60).state == "succeeded"
    keys_before = _idle(store)
    values_before = _bpxw(store)
    ledger_before = _ledger_counts(sandbox)

    other = solana_address()
    with pytest.raises(IdempotencyConflict) as excinfo:
        submit_withdrawal("USDC", "Solana", other, "999", idempotency_key=key)

    conflict = excinfo.value
    assert conflict.job_id == job_id and conflict.idempotency_key == key
    assert conflict.fields == ("address", "quantity")
    assert conflict.differences == {"address": (address, other), "quantity": ("1", "999")}
    assert "address, quantity" in str(conflict) and "nothing was written" in str(conflict)
    assert _written(store) == keys_before
    assert _bpxw(store) == values_before
    assert _ledger_counts(sandbox) == ledger_before


def test_a_conflict_on_a_job_still_running_changes_nothing_either(stack, sandbox, store):
    sandbox.configure(confirm_delay=30)  # the job stays at reconcile, polling
    key, address = _key(), solana_address()
    job_id = submit_withdrawal("USDC", "Solana", address, "3", idempotency_key=key)
    record_before = store.require(job_id)
    idem_before = store.redis.hgetall(idem_key(key))
    with pytest.raises(IdempotencyConflict) as excinfo:
        submit_withdrawal("USDT", "Solana", address, "3", idempotency_key=key, window=2000)
    assert excinfo.value.fields == ("symbol", "window")
    assert store.redis.hgetall(idem_key(key)) == idem_before
    # Its own steps may have moved on meanwhile; the request it carries has not.
    assert store.require(job_id).inputs == record_before.inputs
    sandbox.configure(confirm_delay=0.5)
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert [w["quantity"] for w in sandbox.withdrawals(rules.client_id(key))] == ["3"]


def test_cli_exits_5_on_a_conflict_naming_both_values_on_stderr(stack, sandbox, store):
    key, address = _key(), solana_address()
    job_id = submit_withdrawal("USDC", "Solana", address, "1", idempotency_key=key)
    assert wait_for(job_id, timeout=60).state == "succeeded"
    keys_before = _idle(store)
    values_before = _bpxw(store)
    ledger_before = _ledger_counts(sandbox)

    result = subprocess.run(
        [sys.executable, "-m", "bpx_worker.interfaces.cli", "submit", "--symbol", "USDC", "--blockchain", "Solana",
         "--address", address, "--quantity", "999", "--idempotency-key", key],
        env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert any(job_id in line and "nothing was written" in line for line in lines), lines
    assert "quantity: the job has 1, this request has 999" in lines
    assert not any(line.startswith("address:") for line in lines)
    assert _written(store) == keys_before
    assert _bpxw(store) == values_before
    assert _ledger_counts(sandbox) == ledger_before


def test_cli_same_key_and_same_request_prints_the_same_job(stack, sandbox):
    key, address = _key(), solana_address()
    job_id = submit_withdrawal("USDC", "Solana", address, "4", idempotency_key=key)
    result = subprocess.run(
        [sys.executable, "-m", "bpx_worker.interfaces.cli", "submit", "--symbol", "USDC", "--blockchain", "Solana",
         "--address", address, "--quantity", "4.00", "--idempotency-key", key],
        env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.strip() == job_id
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert len(sandbox.withdrawals(rules.client_id(key))) == 1


# --- creation is all or nothing -------------------------------------------------------------------


class _Died(BaseException):
    """The submitting process stops here: nothing after this point reaches Redis."""


def _dies_after(monkeypatch: pytest.MonkeyPatch, sends: int) -> None:
    """Let `sends` commands (a pipeline counts as one) reach Redis, then stop the caller."""
    original = redis.connection.AbstractConnection.send_packed_command
    sent = 0

    def send(self: redis.connection.AbstractConnection, command: object, check_health: bool = True) -> None:
        nonlocal sent
        if sent >= sends:
            raise _Died()
        sent += 1
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)


def _job_state(client: redis.Redis, key: str) -> str:
    """'none' (the key is free), 'whole' (key, record, indexes, event) or what is missing."""
    kind = client.type(idem_key(key))
    if kind == "none":
        return "none"
    job_id = str(client.hget(idem_key(key), "job") if kind == "hash" else client.get(idem_key(key)))
    missing = [name for name, present in (
        ("record", client.exists(job_key(job_id))),
        ("jobs index", client.zscore(JOBS_INDEX, job_id) is not None),
        ("active index", client.zscore(ACTIVE_INDEX, job_id) is not None),
        ("first event", client.xlen(events_key(job_id))),
    ) if not present]
    return "whole" if not missing else "missing " + ", ".join(missing)


def test_a_submitter_dying_at_any_point_of_creation_leaves_nothing_or_the_whole_job(stack, sandbox, store,
                                                                                     monkeypatch):
    key, address = _key(), solana_address()
    inputs = {"symbol": "USDC", "blockchain": "Solana", "address": address, "quantity": "5",
              "clientId": rules.client_id(key)}
    fingerprint = {"symbol": "USDC", "blockchain": "Solana", "address": address, "quantity": "5", "window": None}
    states = []
    for sends in range(20):
        dying = RedisJobStore(redis.Redis.from_url(stack.redis_url, decode_responses=True))
        try:
            with monkeypatch.context() as patch:
                _dies_after(patch, sends)
                dying.create(key, rules.client_id(key), inputs, request=fingerprint)
        except _Died:
            states.append(_job_state(store.redis, key))
            continue
        finally:
            dying.redis.connection_pool.disconnect()
        states.append(_job_state(store.redis, key))
        break
    else:
        raise AssertionError(f"create never finished: {states}")
    assert states[-1] == "whole"
    assert set(states) <= {"none", "whole"}, states
    # The job was recorded but never enqueued (its submitter "died"): the next
    # submit of the same request enqueues it, and it runs once.
    job_id = submit_withdrawal("USDC", "Solana", address, "5", idempotency_key=key)
    assert job_id == store.redis.hget(idem_key(key), "job")
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert len(sandbox.withdrawals(rules.client_id(key))) == 1


@pytest.mark.parametrize("form", ["string (an older submit)", "hash"])
def test_a_key_left_naming_no_job_is_taken_afresh_by_the_next_submit(stack, sandbox, store, form):
    # What a submit that died between its writes used to leave: the key, and no record.
    key, address, ghost = _key(), solana_address(), uuid.uuid4().hex
    if form == "hash":
        store.redis.hset(idem_key(key), mapping={"job": ghost, "request": "{}"})
    else:
        store.redis.set(idem_key(key), ghost)
    job_id = submit_withdrawal("USDC", "Solana", address, "6", idempotency_key=key)
    assert job_id != ghost
    assert store.redis.hget(idem_key(key), "job") == job_id
    record = wait_for(job_id, timeout=60)
    assert record.state == "succeeded", record.error
    assert len(sandbox.withdrawals(rules.client_id(key))) == 1
    assert submit_withdrawal("USDC", "Solana", address, "6", idempotency_key=key) == job_id


def _legacy_job(store, key: str, address: str, quantity: str) -> str:
    """A job as the previous version left it: its key a plain string naming the job, no fingerprint."""
    job_id, _ = store.create(key, rules.client_id(key), {"symbol": "USDC", "blockchain": "Solana", "address": address,
                                                         "quantity": quantity, "clientId": rules.client_id(key)})
    store.redis.delete(idem_key(key))
    store.redis.set(idem_key(key), job_id)
    return job_id


def test_a_key_of_the_previous_version_is_compared_against_its_record(stack, sandbox, store):
    key, address = _key(), solana_address()
    job_id = _legacy_job(store, key, address, "7.0")
    with pytest.raises(IdempotencyConflict) as excinfo:
        submit_withdrawal("USDC", "Solana", address, "70", idempotency_key=key)
    assert excinfo.value.differences == {"quantity": ("7.0", "70")}
    assert store.redis.get(idem_key(key)) == job_id  # left as it was
    # The same request gets its job, and the job (never enqueued by the "old" submit) runs once.
    assert submit_withdrawal("USDC", "Solana", address, "7", idempotency_key=key) == job_id
    assert wait_for(job_id, timeout=60).state == "succeeded"
    assert len(sandbox.withdrawals(rules.client_id(key))) == 1
