"""Redis with a password and with TLS: broker, job store, beat and commands all work; the password never shows.

The session's stack already runs a private Redis that asks for a generated password; the TLS
stack here uses a throwaway CA made by the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests

from devtools.local import RedisStartError, Stack, local_stack, wait_until
from tests.integration.conftest import BALANCES, WORKER_ENV
from tests.integration.intake_stack import intake

CLI = [sys.executable, "-m", "bpx_worker.interfaces.cli"]
SOLANA_ADDRESS = "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=stack.env(**WORKER_ENV, **env), capture_output=True, text=True,
                          timeout=120)


def submit_args(quantity: str = "1") -> list[str]:
    return ["submit", "--symbol", "USDC", "--blockchain", "Solana", "--address", SOLANA_ADDRESS,
            "--quantity", quantity, "--idempotency-key", f"cred-{uuid.uuid4().hex}"]


def password_of(stack: Stack) -> str:
    if stack.redis is None or not stack.redis.password:
        pytest.skip("REDIS_URL was given: the stack's Redis is not ours")
    return stack.redis.password


def with_password(stack: Stack, password: str | None) -> str:
    """The stack's Redis URL with another password (or none)."""
    assert stack.redis is not None
    auth = f":{quote(password, safe='')}@" if password else ""
    scheme = "rediss" if stack.redis.tls else "redis"
    return f"{scheme}://{auth}127.0.0.1:{stack.redis.port}/0"


# --- password ---------------------------------------------------------------------------------


def test_the_local_stack_redis_asks_for_a_password(stack):
    password = password_of(stack)
    assert password in stack.redis_url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis.port).ping()


def test_a_job_runs_end_to_end_on_a_password_protected_redis(stack, sandbox):
    password = password_of(stack)
    submitted = cli(stack, *submit_args(), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0].strip()
    status = cli(stack, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    for output in (submitted.stdout, submitted.stderr, status.stdout, status.stderr):
        assert password not in output
    assert password not in (stack.directory / "worker.log").read_text(errors="replace")


@pytest.mark.parametrize("password", ["wrong-Passw0rd-xyz", None], ids=["wrong password", "no password"])
def test_a_refused_login_is_service_unavailable_and_never_prints_a_password(stack, password):
    right = password_of(stack)
    for args in (["status", "some-job"], submit_args()):
        result = cli(stack, *args, REDIS_URL=with_password(stack, password))
        assert result.returncode == 69, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "unavailable" in lines[0], result.stderr
        assert right not in result.stdout + result.stderr
        if password:
            assert password not in result.stdout + result.stderr


def test_a_worker_with_a_wrong_password_never_logs_it(stack):
    wrong = "wrong-Worker-Pw-123"
    password_of(stack)
    log = stack.directory / "wrong-password.log"
    process = stack.start_worker("wrong-password", concurrency=1, REDIS_URL=with_password(stack, wrong), **WORKER_ENV)
    try:
        # Celery keeps retrying the broker; wait until it has said why.
        wait_until(lambda: "Cannot connect" in log.read_text(errors="replace"), 90, "the broker connection error")
        text = log.read_text(errors="replace")
        assert wrong not in text and stack.redis.password not in text
        assert "ready" not in text
    finally:
        stack.stop_worker("wrong-password", hard=True)
    assert process.poll() is not None


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[Stack]:
    args = ["--balances", BALANCES, "--history-lag", "0.3", "--confirm-delay", "0.5"]
    try:
        with local_stack(sandbox_args=args, worker_env=WORKER_ENV, redis_tls=True) as running:
            yield running
    except RedisStartError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise


def test_the_tls_stack_speaks_only_verified_tls(tls_stack):
    assert tls_stack.redis_url.startswith("rediss://") and tls_stack.redis_ca_file is not None
    with pytest.raises(redis.ConnectionError):  # plain text on the TLS port
        redis.Redis.from_url(with_password(tls_stack, tls_stack.redis.password).replace("rediss", "redis")).ping()


def test_a_job_runs_end_to_end_on_a_tls_redis(tls_stack):
    from bpx_worker.interfaces.api import submit_withdrawal, wait_for

    with tls_stack.activated(**WORKER_ENV):
        job_id = submit_withdrawal("USDC", "Solana", SOLANA_ADDRESS, "2", idempotency_key=f"tls-{uuid.uuid4().hex}")
        assert wait_for(job_id, timeout=90).state.value == "succeeded"
    status = cli(tls_stack, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["outputs"]["status"] == "confirmed"
    watched = cli(tls_stack, "watch", job_id)
    assert watched.returncode == 0 and "succeeded" in watched.stdout
    submitted = cli(tls_stack, *submit_args("3"), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    assert tls_stack.redis.password not in submitted.stdout + submitted.stderr


def test_beat_sends_the_sweep_over_tls(tls_stack):
    worker_log = tls_stack.directory / "worker.log"
    tls_stack.start_beat(**WORKER_ENV, SWEEP_INTERVAL="1")
    try:
        wait_until(lambda: "withdrawal.sweep" in worker_log.read_text(errors="replace")
                   and "succeeded" in worker_log.read_text(errors="replace").split("withdrawal.sweep", 1)[1],
                   90, "a sweep sent by beat and run by the worker")
    finally:
        tls_stack._stop("beat")
    assert tls_stack.redis.password not in (tls_stack.directory / "beat.log").read_text(errors="replace")


def test_the_intake_is_ready_on_a_tls_redis(tls_stack):
    with intake(tls_stack) as url:
        ready = requests.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text


def test_a_tls_redis_is_refused_without_its_ca(tls_stack):
    env = tls_stack.env(**WORKER_ENV)
    env.pop("REDIS_CA_FILE")
    result = subprocess.run([*CLI, "status", "some-job"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 69, result.stderr
    assert "certificate verify failed" in result.stderr
    assert tls_stack.redis.password not in result.stderr


def test_a_worker_refuses_a_ca_file_that_does_not_exist(tls_stack, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "bpx_worker.tasks.app", "worker"],
        env=tls_stack.env(**WORKER_ENV, REDIS_CA_FILE=str(tmp_path / "absent.pem")),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 78 and "REDIS_CA_FILE" in result.stderr
