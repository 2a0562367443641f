"""A new user's first commands, each in a process of its own: a key pair, the version, the Redis it will use."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from bpx_worker.exchange.signer import Signer

BPX_WORKER = str(Path(sys.executable).parent / "bpx-worker")


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("BACKPACK_")}
    return subprocess.run([BPX_WORKER, *args], env={**clean, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_keys_generate_writes_a_pair_with_a_private_secret_and_prints_the_environment(tmp_path):
    done = run("keys", "generate", "--dir", "secrets", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    directory = tmp_path / "secrets"
    secret, key = directory / "backpack-api-secret", directory / "backpack-api-key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert len(base64.b64decode(secret.read_text().strip(), validate=True)) == 32
    Signer.from_secret(key.read_text(), secret.read_text())  # the pair belongs together
    assert done.stdout.splitlines() == [f"export BACKPACK_API_KEY_FILE={key}",
                                        f"export BACKPACK_API_SECRET_FILE={secret}"]
    assert secret.read_text().strip() not in done.stdout + done.stderr  # the secret is never printed

    again = run("keys", "generate", "--dir", "secrets", cwd=tmp_path)
    assert again.returncode == 6 and "pass --force to replace the pair" in again.stderr
    first = secret.read_text()
    assert run("keys", "generate", "--dir", "secrets", "--force", cwd=tmp_path).returncode == 0
    assert secret.read_text() != first
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_version_prints_the_installed_version():
    done = run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"bpx-worker, version {version('backpack-withdrawal-worker')}")


@pytest.mark.parametrize("command", [["status", "some-job"], ["watch", "some-job"], ["jobs"], ["worker"],
                                     ["pause", "--reason", "x"], ["cancel", "some-job"],
                                     ["submit", "--symbol", "USDC", "--blockchain", "Solana", "--address", "A",
                                      "--quantity", "1"]])
def test_commands_run_by_hand_refuse_the_default_redis_unless_redis_url_is_set(command):
    refused = run(*command)
    assert refused.returncode == 78
    assert "REDIS_URL: not set" in refused.stderr
    assert "redis://127.0.0.1:6379/0" in refused.stderr
