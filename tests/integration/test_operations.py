"""Start-up checks and operator-facing errors, with real processes.

A worker without usable keys refuses to start (exit 78, naming the variable) before it is
ready; commands facing an unavailable Redis print one line and exit 69; bad settings exit 78;
Flower listens on 127.0.0.1 and does not start without a login.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bpx_worker.config.settings import Settings
from bpx_worker.exchange.signer import Signer
from devtools.local import PrivateRedis, free_port, wait_until

PASSWORD = "Op3rations-Redis-Pw"
CLI = [sys.executable, "-m", "bpx_worker.interfaces.cli"]
CELERY = [sys.executable, "-m", "celery", "-A", "bpx_worker.tasks.app"]
SOLANA_ADDRESS = "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any setting of ours (another test may have activated a stack)."""
    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("FLOWER_")}
    env.update(values)
    return env


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"), password=PASSWORD).start()
    yield server
    server.stop()


# --- a worker without keys --------------------------------------------------------------------


def _key_cases(tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    signer, secret = Signer.generate()
    other, _ = Signer.generate()
    secret_file = tmp / "secret"
    secret_file.write_text(secret)
    return {
        "no keys": ({}, "BACKPACK_API_KEY"),
        "secret file missing": ({"BACKPACK_API_KEY": signer.api_key,
                                 "BACKPACK_API_SECRET_FILE": str(tmp / "absent")}, "BACKPACK_API_SECRET_FILE"),
        "key not base64": ({"BACKPACK_API_KEY": "not-a-key!", "BACKPACK_API_SECRET_FILE": str(secret_file)},
                           "BACKPACK_API_KEY"),
        "key of another secret": ({"BACKPACK_API_KEY": other.api_key, "BACKPACK_API_SECRET_FILE": str(secret_file)},
                                  "BACKPACK_API_KEY / BACKPACK_API_SECRET"),
        "exchange URL not http": ({"BACKPACK_API_KEY": signer.api_key, "BACKPACK_API_SECRET_FILE": str(secret_file),
                                   "BACKPACK_BASE_URL": "exchange.example/api"}, "BACKPACK_BASE_URL"),
    }


@pytest.mark.parametrize("entry", ["celery worker", "bpx-worker worker"])
@pytest.mark.parametrize("case", ["no keys", "secret file missing", "key not base64", "key of another secret",
                                  "exchange URL not http"])
def test_a_worker_without_usable_keys_refuses_to_start_naming_the_variable(redis_with_password, tmp_path, entry,
                                                                           case):
    env_extra, variable = _key_cases(tmp_path)[case]
    # A reachable Redis: a worker that wrongly started would connect and report ready.
    env = clean_env(REDIS_URL=redis_with_password.url, **env_extra)
    argv = ([*CELERY, "worker", "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
            if entry == "celery worker" else [*CLI, "worker", "--concurrency", "1"])
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the worker started without usable keys ({case}):\n{err[-2000:]}")
    assert process.returncode == 78, err
    assert variable in err
    assert "ready" not in (out + err)
    assert "Traceback" not in err
    assert PASSWORD not in out + err


# --- commands with Redis unavailable ----------------------------------------------------------


def _commands() -> list[list[str]]:
    submit = ["submit", "--symbol", "USDC", "--blockchain", "Solana", "--address", SOLANA_ADDRESS,
              "--quantity", "1", "--idempotency-key", "ops-redis-down"]
    commands = [["status", "some-job"], ["status", "some-job", "--json"], ["watch", "some-job"], submit]
    from bpx_worker.interfaces.cli import main

    if "jobs" in main.commands:
        commands.append(["jobs"])
    return commands


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c[:2]))
def test_a_command_with_redis_down_prints_one_line_and_exits_service_unavailable(command):
    signer, _ = Signer.generate()
    env = clean_env(REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", BACKPACK_API_KEY=signer.api_key)
    result = run([*CLI, *command], env)
    assert result.returncode == 69, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unavailable" in lines[0], result.stderr
    assert PASSWORD not in result.stderr


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers, like a hung Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_command_gives_up_on_a_silent_redis_instead_of_riding_it_out(silent_server):
    # The workers' store would retry 15 times with a 10 s socket timeout; a command must not.
    env = clean_env(REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{silent_server}/0")
    result = run([*CLI, "status", "some-job"], env, timeout=60)
    assert result.returncode == 69, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("env, variable", [
    ({"LEASE_TTL": "6"}, "LEASE_TTL"),
    ({"REDIS_URL": f"http://:{PASSWORD}@127.0.0.1:1/0"}, "REDIS_URL"),
    ({"VISIBILITY_TIMEOUT": "5"}, "VISIBILITY_TIMEOUT"),
])
@pytest.mark.parametrize("command", [[*CLI, "status", "some-job"], [*CELERY, "beat"], [*CELERY, "worker"]],
                         ids=["bpx-worker status", "celery beat", "celery worker"])
def test_bad_configuration_exits_78_naming_the_variable(command, env, variable):
    result = run(command, clean_env(**env))
    assert result.returncode == 78, result.stderr
    assert variable in result.stderr and "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr and result.stdout == ""


# --- Flower -----------------------------------------------------------------------------------


def test_flower_refuses_to_start_without_a_login(redis_with_password):
    result = run([*CLI, "flower", "--port", str(free_port())], clean_env(REDIS_URL=redis_with_password.url))
    assert result.returncode == 78
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_flower_refuses_a_malformed_login(redis_with_password):
    env = clean_env(REDIS_URL=redis_with_password.url, FLOWER_BASIC_AUTH="admin")
    result = run([*CLI, "flower", "--port", str(free_port())], env)
    assert result.returncode == 78 and "FLOWER_BASIC_AUTH" in result.stderr


def test_flower_listens_on_loopback_only_and_asks_for_the_generated_login(redis_with_password):
    pytest.importorskip("flower")
    port = free_port()
    process = subprocess.Popen([*CLI, "flower", "--port", str(port), "--generate-auth"],
                               env=clean_env(REDIS_URL=redis_with_password.url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stderr is not None
        login = None
        for line in process.stderr:
            found = re.search(r"generated, shown once\): (\S+):(\S+)", line)
            if found:
                login = found.groups()
                break
        assert login, "no generated login was printed"
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: requests.get(url, timeout=2).status_code in (200, 401), 90, "flower")
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, auth=login, timeout=5).status_code == 200
        # Bound to 127.0.0.1 itself, not to every interface (127.0.0.2 is this machine too).
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass
        assert login[1] not in " ".join(Path(f"/proc/{process.pid}/cmdline").read_text().split("\0"))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
