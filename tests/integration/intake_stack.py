"""Real servers for the intake tests: the intake over HTTP (`bpx-worker serve` in a subprocess), a worker with
callbacks and metrics, callback receivers, and Flower."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from devtools.local import Stack, free_port, wait_until
from tests.integration.conftest import WORKER_ENV

TOKEN = "payments-" + secrets.token_hex(16)
OTHER_TOKEN = "reports-" + secrets.token_hex(16)
CALLBACK_SECRET = "whsec-" + secrets.token_hex(16)
# The intake also lets 127.0.0.2 through; the worker does not: a host taken off the list between the submit and
# the call is never called.
INTAKE_ENV = {
    "INTAKE_TOKENS": f"payments={TOKEN},reports={OTHER_TOKEN}",
    "CALLBACK_SECRETS": f"payments={CALLBACK_SECRET}",
    "CALLBACK_ALLOWED_HOSTS": "127.0.0.1,127.0.0.2",
}
WORKER_CALLBACK_ENV = {
    "CALLBACK_SECRETS": f"payments={CALLBACK_SECRET}",
    "CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
    "CALLBACK_INITIAL_DELAY": "0.2",
    "CALLBACK_MAX_DELAY": "1",
    "CALLBACK_MAX_ATTEMPTS": "5",
}


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A callback receiver on a real socket. Paths: /ok answers 200, /flaky answers 500 to its first
    `failures` calls, /redirect answers 302 to /redirected."""

    host: str
    port: int
    failures: int = 2
    calls: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.changed:
            return [c for c in self.calls if c.path.split("?")[0] == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 60) -> list[Received]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.on(path)) >= count, timeout):
                raise TimeoutError(f"{count} call(s) to {path} did not arrive; got {[c.path for c in self.calls]}")
            return self.on(path)


@contextmanager
def receiver(host: str = "127.0.0.1") -> Iterator[Receiver]:
    state = Receiver(host, free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.changed:
                state.calls.append(Received(self.path, dict(self.headers), body))
                flaky = len(state.on("/flaky"))
                state.changed.notify_all()
            path = self.path.split("?")[0]
            if path == "/flaky" and flaky <= state.failures:
                self.send_response(500)
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", state.url("/redirected"))
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host, state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def intake_worker(stack: Stack, metrics_port: int) -> Iterator[None]:
    """The stack's worker replaced by one with callbacks and metrics, for as long as the block runs."""
    stack.stop_worker("worker")
    stack.start_worker("intake-worker", 2, **WORKER_CALLBACK_ENV, METRICS_PORT=str(metrics_port))
    try:
        yield
    finally:
        stack.stop_worker("intake-worker")
        stack.start_worker("worker", 2, **WORKER_ENV)


@contextmanager
def intake(stack: Stack, *args: str, **env: str) -> Iterator[str]:
    """`bpx-worker serve` in a subprocess on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    log = open(stack.directory / "intake.log", "ab")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [sys.executable, "-m", "bpx_worker.interfaces.cli", "serve", "--port", str(port), *args],
        env=stack.env(**{**INTAKE_ENV, **env}), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is None and requests.get(url + "/healthz", timeout=1).ok, 30, "the intake")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@contextmanager
def flower(stack: Stack) -> Iterator[str]:
    """Flower from this venv, on a free port, its broker the test Redis; its API needs no login here."""
    port = free_port()
    log = open(stack.directory / "flower.log", "ab")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "--broker", stack.redis_url, "-A", "bpx_worker.tasks.app", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env=stack.env(FLOWER_UNAUTHENTICATED_API="true"), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is None and requests.get(url + "/healthcheck", timeout=1).ok, 60,
                   "Flower")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
