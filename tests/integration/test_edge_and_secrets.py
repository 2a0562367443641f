"""Bad input is refused at the edge with nothing written; secrets never leave the places they belong.

Everything here runs against the real stack of conftest.py: a private Redis, the
sandbox over HTTP and a real Celery worker process.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from celery import signals

from bpx_worker.config.celery import POLLS_QUEUE
from bpx_worker.errors import InvalidRequest, RejectedError
from bpx_worker.exchange.ratelimit import PREFIX as RATE_PREFIX
from bpx_worker.interfaces.api import get_job, submit_withdrawal, wait_for
from bpx_worker.jobs.schedule import POLLS_KEY
from bpx_worker.jobs.store import JOBS_INDEX, sealed_2fa_key
from bpx_worker.logs import REDACTED, redact
from bpx_worker.withdrawal.request import parse_request
from devtools.local import wait_until
from tests.addresses import solana_address
from tests.unit.test_request import BAD

# An ED25519 signature is 64 bytes: 88 base64 characters ending in "==".
SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}==")

REQUIRED = ("symbol", "blockchain", "address", "quantity")
OPTIONAL = ("idempotency_key", "two_factor_token", "window")


ROOT = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------

def _through_api(data: dict[str, Any]) -> bool:
    """True when the row can be expressed as a submit_withdrawal(...) call."""
    return all(name in data for name in REQUIRED) and set(data) <= {*REQUIRED, *OPTIONAL}


API_ROWS = [row for row in BAD if _through_api(row[1])]
PARSE_ROWS = [row for row in BAD if not _through_api(row[1])]


def _written(store) -> tuple[frozenset[str], int]:
    """What a submit could write: the product's keys, and the length of the task queue.

    Keys that expire on a timer whatever a test does are left out, since comparing
    them made the comparison depend on timing: kombu's housekeeping (`unacked_mutex`,
    set and deleted by its restore timer) and the rate limiter's state (`bpxw:rate:*`,
    which expires once it lies in the past).
    """
    keys = (k for k in store.redis.scan_iter("bpxw:*", count=1000) if not k.startswith(RATE_PREFIX))
    return frozenset(keys), store.redis.llen("withdrawals")


def _idle(store, timeout: float = 20.0) -> tuple[frozenset[str], int]:
    """Wait until the worker has nothing queued or in hand and the product's keys are still; return them.

    With late acks a running or waiting (ETA) task stays in kombu's `unacked`
    hash, so empty queues, an empty `unacked` and no poll waiting in the poll
    schedule (a pending withdrawal of an earlier test) mean the worker is idle.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy = (store.redis.llen("withdrawals") or store.redis.llen(POLLS_QUEUE) or store.redis.hlen("unacked")
                or store.redis.zcard(POLLS_KEY))
        first = _written(store)
        time.sleep(0.05)
        second = _written(store)
        if not busy and first == second:
            return second
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not go idle within {timeout:g}s")
        time.sleep(0.1)


def _ledger_counts(sandbox) -> tuple[dict[str, int], list[tuple[int, str]]]:
    ledger = sandbox.ledger()
    return ledger["requests"], [(w["id"], w["clientId"]) for w in ledger["withdrawals"]]


def _walk(value: Any, parts: list[str]) -> None:
    """Flatten a value into text, opening JSON strings and kombu's base64 message bodies."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, (dict, list)):
            _walk(inner, parts)
        else:
            parts.append(value)
        return
    if isinstance(value, dict):
        properties = value.get("properties")
        encoded = isinstance(properties, dict) and properties.get("body_encoding") == "base64"
        for key, item in value.items():
            parts.append(str(key))
            if encoded and key == "body" and isinstance(item, str):
                # Search what the body says, not its base64 (which would also look like a signature).
                _walk(base64.b64decode(item).decode("utf-8", "replace"), parts)
            else:
                _walk(item, parts)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _walk(item, parts)
        return
    parts.append(str(value))


def _text(value: Any) -> str:
    parts: list[str] = []
    _walk(value, parts)
    return "\n".join(parts)


def redis_dump(client) -> dict[str, str]:
    """Every key in Redis and its whole value as searchable text, whatever the type."""
    dump = {}
    for key in client.scan_iter("*", count=1000):
        kind = client.type(key)
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        elif kind == "none":  # expired or deleted between SCAN and TYPE
            continue
        else:
            raise AssertionError(f"redis key {key!r} has a type the scan does not read: {kind}")
        if value is None:  # deleted between TYPE and the read
            continue
        dump[key] = key + "\n" + _text(value)
    return dump


class Needles:
    """What must never be found: the API secret (base64 and hex), the 2FA token, any signature."""

    def __init__(self, secret: str, token: str):
        self.exact = {
            "API secret": secret,
            "API secret (hex)": base64.b64decode(secret).hex(),
            "2FA token": token,
        }

    def found(self, text: str) -> list[str]:
        hits = [name for name, needle in self.exact.items() if needle in text]
        match = SIGNATURE.search(text)
        if match:
            start = max(match.start() - 60, 0)
            hits.append(f"a signature-like value, after {text[start:match.start()]!r}")
        return hits

    def assert_clean(self, source: str, text: str) -> None:
        hits = self.found(text)
        assert not hits, f"{source} holds {hits}"


# --- 1. validation at the edge -----------------------------------------------------------------


def test_enough_bad_rows_go_through_the_python_api():
    assert len(API_ROWS) >= 30
    assert len(API_ROWS) + len(PARSE_ROWS) == len(BAD)
    # Only rows the keyword API cannot express go to parse_request.
    assert all(not _through_api(row[1]) for row in PARSE_ROWS)


def _check_errors(exc: InvalidRequest, expected: dict[str, str]) -> None:
    assert set(exc.errors) == set(expected), exc.errors
    for field, fragment in expected.items():
        assert fragment in exc.errors[field], (field, exc.errors[field])


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in API_ROWS], ids=[row[0] for row in API_ROWS])
def test_submit_refuses_bad_input_and_writes_nothing(stack, sandbox, store, data, expected):
    keys_before = _idle(store)
    jobs_before = store.redis.zcard(JOBS_INDEX)
    requests_before, withdrawals_before = _ledger_counts(sandbox)

    positional = [data[name] for name in REQUIRED]
    keywords = {name: data[name] for name in OPTIONAL if name in data}
    with pytest.raises(InvalidRequest) as excinfo:
        submit_withdrawal(*positional, **keywords)

    _check_errors(excinfo.value, expected)
    assert _written(store) == keys_before
    assert store.redis.zcard(JOBS_INDEX) == jobs_before
    assert _ledger_counts(sandbox) == (requests_before, withdrawals_before)


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in PARSE_ROWS], ids=[row[0] for row in PARSE_ROWS])
def test_rows_the_keyword_api_cannot_express_are_refused_by_parse_request(stack, store, data, expected):
    # A missing positional argument or an unknown keyword would be a TypeError
    # from Python itself, before submit_withdrawal runs; the shared model is
    # checked directly instead.
    keys_before = _idle(store)
    with pytest.raises(InvalidRequest) as excinfo:
        parse_request(data)
    _check_errors(excinfo.value, expected)
    assert _written(store) == keys_before


def test_cli_refuses_bad_input_with_exit_code_2_and_writes_nothing(stack, sandbox, store):
    keys_before = _idle(store)
    jobs_before = store.redis.zcard(JOBS_INDEX)
    requests_before, withdrawals_before = _ledger_counts(sandbox)
    result = subprocess.run(
        [sys.executable, "-m", "bpx_worker.interfaces.cli", "submit", "--symbol", "USDC", "--blockchain", "solana",
         "--address", "a b", "--quantity", "1e3"],
        env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""  # errors go to stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert "refused, nothing was written:" in lines
    assert "blockchain: must be spelled exactly 'Solana'" in lines
    assert "address: must not contain whitespace" in lines
    assert "quantity: must not use exponent notation" in lines
    assert "symbol:" not in result.stderr
    assert "Traceback" not in result.stderr
    assert _written(store) == keys_before
    assert store.redis.zcard(JOBS_INDEX) == jobs_before
    assert _ledger_counts(sandbox) == (requests_before, withdrawals_before)


# --- 3. secrets stay secret ---------------------------------------------------------------------


def test_scanner_finds_what_it_looks_for(stack, store):
    """The scan can fail: a secret planted in Redis, plain or inside a kombu message, is found."""
    secret = stack.secret_file.read_text().strip()
    token = f"tfa{secrets.randbelow(10**6):06d}"
    needles = Needles(secret, token)
    plain, message = f"selfcheck:{uuid.uuid4().hex}", f"selfcheck:{uuid.uuid4().hex}"
    signature = nacl.signing.SigningKey.generate().sign(b"x").signature
    body = base64.b64encode(json.dumps([[token], {}, {}]).encode()).decode()
    try:
        store.redis.set(plain, json.dumps({"deep": {"value": secret}}))
        store.redis.hset(message, "tag", json.dumps(
            [{"body": body, "properties": {"body_encoding": "base64"}}, "", "withdrawals"]))
        dump = redis_dump(store.redis)
        assert needles.found(dump[plain]) == ["API secret"]
        assert needles.found(dump[message]) == ["2FA token"]
        assert needles.found(base64.b64encode(signature).decode())[0].startswith("a signature-like value")
    finally:
        store.redis.delete(plain, message)
    assert not set(redis_dump(store.redis)) & {plain, message}


class _RecordingSigner:
    """Delegates to a real signer and remembers every signature it made."""

    def __init__(self, signer):
        self.signer, self.signatures = signer, []

    def headers(self, *args, **kwargs):
        headers = self.signer.headers(*args, **kwargs)
        self.signatures.append(headers["X-SIGNATURE"])
        return headers


def _wrong_key_withdrawal(stack, token: str) -> tuple[RejectedError, list[str]]:
    """A withdrawal carrying the token, signed with the wrong key: the sandbox must refuse it."""
    from bpx_worker.arazzo import HttpRequest, withdrawal_workflow
    from bpx_worker.exchange.client import BackpackClient
    from bpx_worker.exchange.signer import Signer

    operation = withdrawal_workflow().step("requestWithdrawal").operation
    impostor = _RecordingSigner(Signer(stack.api_key, nacl.signing.SigningKey.generate()))
    client = BackpackClient(stack.sandbox_url, impostor)  # type: ignore[arg-type]  # records what it signs
    body = {"symbol": "USDC", "blockchain": "Solana", "address": f"Addr{uuid.uuid4().hex[:12]}", "quantity": "1",
            "clientId": f"wrong-{uuid.uuid4().hex[:8]}", "twoFactorToken": token}
    try:
        with pytest.raises(RejectedError) as excinfo:
            client.send(HttpRequest(operation.method, operation.path, operation.instruction, body=body))
    finally:
        client.close()
    return excinfo.value, impostor.signatures


def test_secrets_never_leave_their_place_after_a_real_run(stack, sandbox, store):
    secret = stack.secret_file.read_text().strip()
    token = f"tfa{secrets.randbelow(10**6):06d}"
    needles = Needles(secret, token)
    addresses = [solana_address() for _ in range(2)]

    # Every request takes a while, so the job is still at getBalances when the
    # sealed token is inspected below.
    sandbox.faults(latency_ms=300)

    published: list[tuple[Any, dict]] = []

    def capture(body=None, headers=None, **_: Any) -> None:
        published.append((body, dict(headers or {})))

    # Redis sampled all through the run, for values that exist only in flight.
    samples: set[tuple[str, str]] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.update(redis_dump(store.redis).items())
            time.sleep(0.05)

    signals.before_task_publish.connect(capture, weak=False)
    try:
        with_token = submit_withdrawal("USDC", "Solana", addresses[0], "1", two_factor_token=token)
        sealed = store.redis.get(sealed_2fa_key(with_token))
        without_token = submit_withdrawal("USDC", "Solana", addresses[1], "2")
    finally:
        signals.before_task_publish.disconnect(capture)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        record = wait_for(with_token, timeout=60)
        other = wait_for(without_token, timeout=60)
    finally:
        stop.set()
        sampler.join(10)
    assert record.state == "succeeded", record.error
    assert other.state == "succeeded", other.error
    assert record.steps["requestWithdrawal"].state == "done"

    # The token sat in Redis only sealed, and only until requestWithdrawal used it.
    from bpx_worker.exchange.signer import Signer

    assert sealed is not None, "the sealed token was gone before getBalances could have finished"
    assert re.fullmatch(r"[0-9a-f]+", sealed) and token not in sealed
    assert Signer.from_secret(stack.api_key, secret).open_sealed(bytes.fromhex(sealed)) == token
    assert not store.redis.exists(sealed_2fa_key(with_token))
    assert not store.redis.exists(sealed_2fa_key(without_token))

    # ...and it reached the exchange, for that withdrawal only.
    mine = sandbox.withdrawals(record.client_id)
    assert [w["id"] for w in mine] == [record.outputs["withdrawalId"]]
    assert mine[0]["twoFactorTokenProvided"] is True
    theirs = sandbox.withdrawals(other.client_id)
    assert len(theirs) == 1 and theirs[0]["twoFactorTokenProvided"] is False

    # Task messages carry the job id and nothing else.
    assert len(published) == 2, published
    chain_tasks = ["withdrawal.requestWithdrawal", "withdrawal.reconcileWithdrawal"]
    for (body, headers), job_id in zip(published, (with_token, without_token), strict=True):
        args, kwargs, embed = body
        assert headers["task"] == "withdrawal.getBalances"
        assert list(args) == [job_id] and kwargs == {}
        chain = embed["chain"]
        assert sorted(sig["task"] for sig in chain) == sorted(chain_tasks)
        for sig in chain:
            assert list(sig["args"]) == [job_id] and sig["kwargs"] == {}, sig
        dumped = json.dumps([body, headers], default=str)
        assert not any(address in dumped for address in addresses)
        assert record.client_id not in dumped and other.client_id not in dumped
        needles.assert_clean(f"task message for {job_id}", dumped)

    # A refused call: its error names the problem but not the signature or the token.
    error, signatures = _wrong_key_withdrawal(stack, token)
    assert error.code == "INVALID_CLIENT_REQUEST" and "Invalid signature" in error.message
    assert len(signatures) == 1 and SIGNATURE.fullmatch(signatures[0])  # the pattern does match a signature
    needles.assert_clean("str(RejectedError)", str(error))
    needles.assert_clean("repr(RejectedError)", repr(error))
    needles.assert_clean("RejectedError.args", _text(list(error.args)))

    # Nowhere in Redis: now, and at any moment sampled during the run.
    final = redis_dump(store.redis)
    # The scan saw what it should: the job's own keys now, and during the run the
    # step messages the worker held (kombu's `unacked` hash), bodies decoded.
    assert {f"bpxw:job:{with_token}", f"bpxw:job:{with_token}:events", JOBS_INDEX} <= set(final)
    assert any(key == "unacked" and with_token in text and "errbacks" in text for key, text in samples), \
        "no in-flight task message was ever sampled: the scan would be blind to queued secrets"
    for key, text in samples | set(final.items()):
        needles.assert_clean(f"redis key {key!r}", text)

    # Nor in the records, nor in the logs of the worker and the sandbox.
    for job_id in (with_token, without_token):
        needles.assert_clean(f"job record {job_id}", get_job(job_id).to_json())
    def log_mentioning(name, needle):
        text = (stack.directory / name).read_text(errors="replace")
        return text if needle in text else None

    # Wait for the lines of this run to be written, so the scan is not blind to them.
    worker_log = wait_until(lambda: log_mentioning("worker.log", with_token), 10, "the worker log to mention the job")
    sandbox_log = wait_until(lambda: log_mentioning("sandbox.log", f"clientId={record.client_id}"), 10,
                             "the sandbox log to mention the withdrawal")
    needles.assert_clean("worker.log", worker_log)
    needles.assert_clean("sandbox.log", sandbox_log)
    for signature in signatures:
        assert signature not in worker_log and signature not in sandbox_log


# --- 4. the log redaction processor -------------------------------------------------------------


def test_redact_drops_secret_values_at_any_depth_and_keeps_the_rest():
    event = {
        "event": "exchange_request",
        "job_id": "job-1",
        "step": "requestWithdrawal",
        "secret": "s3cr3t",
        "api_secret": "s3cr3t",
        "x-signature": "sig",
        "two_factor_token": "739201",
        "twoFactorToken": "739201",
        "password": "hunter2",
        "Authorization": "Bearer x",
        "X-API-KEY": "key",
        "headers": {"X-SIGNATURE": "sig", "X-TIMESTAMP": "1700000000000", "Content-Type": "application/json"},
        "request": {"body": {"quantity": "1", "twoFactorToken": "739201"}},
        "count": 3,
    }
    cleaned = redact(None, "info", event)
    for key in ("secret", "api_secret", "x-signature", "two_factor_token", "twoFactorToken", "password",
                "Authorization", "X-API-KEY"):
        assert cleaned[key] == REDACTED, key
    assert cleaned["headers"] == {"X-SIGNATURE": REDACTED, "X-TIMESTAMP": "1700000000000",
                                  "Content-Type": "application/json"}
    assert cleaned["request"] == {"body": {"quantity": "1", "twoFactorToken": REDACTED}}
    assert (cleaned["event"], cleaned["job_id"], cleaned["step"], cleaned["count"]) == (
        "exchange_request", "job-1", "requestWithdrawal", 3)
    assert "739201" not in json.dumps(cleaned) and "sig" not in json.dumps(cleaned["headers"])
    assert event["secret"] == "s3cr3t"  # the caller's dict is left alone


def test_redact_reaches_into_lists():
    # "at any depth" (worker/logs.py) includes secrets inside lists and tuples of mappings.
    cleaned = redact(None, "info", {
        "event": "e",
        "attempts": [{"n": 1, "two_factor_token": "739201"}],
        "pairs": ({"headers": {"X-Signature": "sig"}}, "plain"),
    })
    assert cleaned["attempts"] == [{"n": 1, "two_factor_token": REDACTED}]
    assert cleaned["pairs"] == ({"headers": {"X-Signature": REDACTED}}, "plain")
