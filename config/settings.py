"""Settings: every knob, its default and meaning, read from the environment in one place.

Each setting is read from the environment variable of the same name in upper
case (`redis_url` <- `REDIS_URL`). `Settings()` validates all of them at once
and names each bad variable. The configuration table of docs/configuration.md
mirrors this class.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
from collections.abc import Iterable
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bpx_worker.errors import ConfigurationError

DEV_SANDBOX_URL = "http://127.0.0.1:8765"
PRODUCTION_URL = "https://api.backpack.exchange"
REDIS_SCHEMES = ("redis", "rediss", "unix")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# A step's Celery time limits, as fractions of LEASE_TTL: the soft limit stops the
# step's own code, the hard limit kills the process, both before the lease expires
# and another run of the step may take the job.
SOFT_LIMIT_SHARE = 0.6
HARD_LIMIT_SHARE = 0.8


_CRON_FIELD = r"[0-9A-Za-z*/,-]+"
_CRON = re.compile(rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4}}$")


class PayoutSchedule(BaseModel):
    """A scheduled run: every `every` seconds or on `cron` (five fields, UTC), take the finished files of `inbox`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    inbox: Path
    cron: str | None = None
    every: float | None = Field(None, gt=0)
    namespace: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # Only files with a `<name>.ready` marker beside them are taken (else: every visible .csv/.jsonl file).
    marker: bool = False
    allow_partial: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> PayoutSchedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule {self.name!r}: give exactly one of cron or every")
        if self.cron is not None and not _CRON.match(" ".join(self.cron.split())):
            raise ValueError(f"schedule {self.name!r}: cron must be five fields (minute hour day month weekday)")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Where things are. The URL may carry credentials (redis://user:password@host): kept out of repr.
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False, description="Broker, result store and job records.")
    # TLS (rediss:// only): the CA that signed the server's certificate (else the system's CAs),
    # and a client certificate and key when the server asks for one.
    redis_ca_file: FilePath | None = None
    redis_cert_file: FilePath | None = None
    redis_key_file: FilePath | None = None
    backpack_base_url: str = Field(DEV_SANDBOX_URL, description="Exchange base URL; production is " + PRODUCTION_URL)

    # Keys: the API key is the base64 ED25519 verifying key, the secret the base64 32-byte seed.
    backpack_api_key: SecretStr | None = None
    backpack_api_key_file: Path | None = None
    backpack_api_secret: SecretStr | None = None
    backpack_api_secret_file: Path | None = None
    backpack_window_ms: int = Field(5000, ge=1, le=60000, description="X-Window for every signed request.")

    # HTTP
    http_connect_timeout: float = Field(3.05, gt=0)
    http_read_timeout: float = Field(10.0, gt=0)

    # Transient-failure retries of a step (Celery countdowns)
    retry_max_attempts: int = Field(6, ge=1, description="Attempts per step for transient failures.")
    retry_initial_delay: float = Field(1.0, ge=0)
    retry_backoff_factor: float = Field(2.0, ge=1)
    retry_max_delay: float = Field(30.0, gt=0)
    retry_jitter: bool = True

    # Reconciliation polling
    # A polled step (one with a `retry` failure action) waits the document's `retryAfter`
    # first and stops after its `retryLimit`; these two override them when set, and the
    # loaded workflow records the override (`bpx-worker workflow` shows it).
    reconcile_initial_delay: float | None = Field(None, ge=0, description="Overrides the document's retryAfter.")
    reconcile_retry_limit: int | None = Field(None, ge=0, description="Overrides the document's retryLimit.")
    reconcile_backoff_factor: float = Field(2.0, ge=1)
    reconcile_max_delay: float = Field(30.0, gt=0)
    reconcile_deadline: float = Field(900.0, gt=0, description="Seconds from the request to a terminal status.")
    # Waiting polls live in a Redis sorted set; each worker's waker sends the due ones this often, as one
    # poll round per step: one shared read of the withdrawal history answers every job in the round.
    poll_wake_interval: float = Field(1.0, gt=0, le=10, description="Seconds between poll rounds.")
    # The balance read is the same for every job: one answer serves every job for this long (0: never shared).
    shared_read_seconds: float = Field(1.0, ge=0, le=60, description="Freshness window of shared balance reads.")

    # Ambiguous withdrawal outcome: how long to look it up by clientId before needs_review.
    lookup_deadline: float = Field(120.0, gt=0)

    # Delivery
    visibility_timeout: int = Field(900, ge=10, description="Redis unacked redelivery, seconds.")
    lease_ttl: float = Field(60.0, gt=0, description="Lease on a job's step while it runs.")
    sweep_interval: float = Field(60.0, gt=0, description="How often beat looks for stalled jobs.")
    stall_after: float = Field(1200.0, gt=0, description="An unfinished job unchanged this long is re-dispatched.")
    # Threads keep many exchange requests in flight on a few cores (a step mostly waits for the exchange
    # and Redis); docs/benchmarks.md measures the choice and docs/design.md "Worker pool" says how each
    # prefork-only safeguard is kept. prefork (one process per step) stays available.
    worker_pool: str = Field("threads", pattern="^(threads|prefork|solo)$", description="Celery pool.")
    worker_concurrency: int | None = Field(None, ge=1, description="Pool slots; default 32 threads, or one "
                                           "process per core under prefork.")
    # Task events feed Flower; about 8 Redis commands a job (docs/benchmarks.md). Off saves them.
    task_events: bool = Field(True, description="Send Celery task events (Flower) from workers and publishers.")
    job_retention: int = Field(7 * 24 * 3600, gt=0, description="Seconds a job record is kept after it ends.")
    redis_socket_timeout: float = Field(10.0, gt=0)

    # Safety limits
    max_quantity: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    allowed_destinations: Annotated[frozenset[str] | None, NoDecode] = None

    # The exchange's rate limit, shared by every worker process (kept in Redis, exchange/ratelimit.py).
    exchange_rate_limit: float = Field(10.0, gt=0, description="Requests per second to the exchange, all workers.")
    exchange_rate_burst: int = Field(1, ge=1, description="Requests that may go at once before spacing applies.")
    exchange_rate_max_wait: float = Field(2.0, ge=0, description="Longest wait in a worker slot; longer re-queues.")
    exchange_rate_slowdown: float = Field(30.0, ge=0, description="Seconds at half rate after the exchange says 429.")

    # Batch payout runs (worker/batches/)
    batch_namespace: str = Field("payouts", pattern=r"^[A-Za-z0-9_-]{1,32}$",
                                 description="The payout program: row idempotency keys are <namespace>:<row key>.")
    batch_retention: int = Field(400 * 24 * 3600, gt=0, description="Seconds batch records and row keys are kept.")
    batch_track_interval: float = Field(2.0, gt=0, description="Seconds between two looks at a running batch.")
    batch_balance_timeout: float = Field(30.0, gt=0, description="Seconds the CLI waits for a worker's balance read.")
    batch_submit_stall: float = Field(60.0, gt=0, description="A batch whose submitter is silent this long is "
                                      "finished submitting by a worker.")
    payout_schedules: list[PayoutSchedule] = Field(default_factory=list,
                                                   description="JSON list of scheduled inbox runs.")
    beat_max_interval: float = Field(5.0, gt=0, description="Beat wakes at least this often; its Redis lock "
                                     "lasts five times as long.")

    # HTTP intake (`bpx-worker serve`). Tokens are `name=secret` pairs: the name is recorded with each job
    # it submits and picks the callback secret; the secret is what a service sends as its bearer token.
    intake_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    intake_tokens_file: Path | None = Field(None, description="A file of `name=secret` lines, mode 0600.")
    intake_host: str = Field("127.0.0.1", description="Address `serve` binds unless --host is given.")
    intake_port: int = Field(8080, ge=1, le=65535)

    # Callbacks when a job ends: only to these hosts (`host` or `host:port`), signed with the secret of the
    # token that submitted the job (HMAC-SHA256), retried with backoff.
    callback_allowed_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    callback_secrets: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    callback_secrets_file: Path | None = None
    callback_max_attempts: int = Field(12, ge=1)
    callback_initial_delay: float = Field(1.0, ge=0)
    callback_max_delay: float | None = Field(None, gt=0, description="Cap on the delay; default RETRY_MAX_DELAY.")
    callback_timeout: float = Field(5.0, gt=0, description="Seconds to connect and to read the answer.")

    # Metrics. A worker serves them only when METRICS_PORT is set (several workers on one host need
    # several ports); the intake serves them on its own port at /metrics.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # prometheus_client's own variable: where the pool processes of one worker keep their counters. Unset,
    # a worker with METRICS_PORT makes a private directory; set, it must not be shared with another worker
    # (each worker empties it at start).
    prometheus_multiproc_dir: Path | None = None

    # Logs: `auto` writes JSON when stderr is not a terminal (a file, a pipe, a log collector).
    log_level: str = "INFO"
    log_format: str = Field("auto", pattern="^(auto|console|json)$")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        # The message never repeats the URL: it may hold a password.
        scheme = urlsplit(value).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in REDIS_SCHEMES)}, got {scheme!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("payout_schedules")
    @classmethod
    def _unique_schedule_names(cls, value: list[PayoutSchedule]) -> list[PayoutSchedule]:
        names = [schedule.name for schedule in value]
        if len(names) != len(set(names)):
            raise ValueError("schedule names must be unique")
        return value

    @field_validator("max_quantity", mode="before")
    @classmethod
    def _parse_limits(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected SYMBOL=QUANTITY[,SYMBOL=QUANTITY...]")
            return {k.strip(): Decimal(v.strip()) for k, v in pairs}
        return value

    @field_validator("allowed_destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(item.strip() for item in value.split(",") if item.strip()) or None
        return value

    @field_validator("intake_tokens", "callback_secrets", mode="before")
    @classmethod
    def _parse_named_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_named_secrets(value.split(","))
        return value

    @field_validator("callback_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(item.strip().lower() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _no_contradictions(self) -> Settings:
        problems = contradictions(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def task_soft_time_limit(self) -> float:
        """Seconds after which a step's code is interrupted (Celery soft time limit)."""
        return round(self.lease_ttl * SOFT_LIMIT_SHARE, 3)

    @property
    def task_time_limit(self) -> float:
        """Seconds after which a step's process is killed (Celery hard time limit)."""
        return round(self.lease_ttl * HARD_LIMIT_SHARE, 3)

    def redis_ssl_options(self) -> dict[str, Any]:
        """TLS options for rediss:// (redis-py keyword arguments, also Celery's `broker_use_ssl`); {} otherwise.

        The server's certificate is always verified; there is no setting to turn that off.
        """
        if urlsplit(self.redis_url).scheme != "rediss":
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(self.redis_ca_file)
        if self.redis_cert_file is not None:
            options["ssl_certfile"] = str(self.redis_cert_file)
            options["ssl_keyfile"] = str(self.redis_key_file)
        return options

    @property
    def redis_url_explicit(self) -> bool:
        """Whether REDIS_URL was given (in the environment), rather than left at its default.

        Commands run by hand refuse the default: the Redis on 127.0.0.1:6379 may be anyone's."""
        return "redis_url" in self.model_fields_set
    def concurrency(self, pool: str | None = None) -> int:
        """WORKER_CONCURRENCY, or the pool's default: 32 threads, one process per core, 1 for solo."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        pool = pool or self.worker_pool
        if pool == "threads":
            return 32
        return 1 if pool == "solo" else (os.cpu_count() or 2)

    def api_key(self) -> str:
        """The base64 ED25519 public key; ConfigurationError naming the variable when unset or malformed."""
        return _secret(self.backpack_api_key, self.backpack_api_key_file, "BACKPACK_API_KEY")

    def api_secret(self) -> str:
        """The base64 32-byte seed; ConfigurationError naming the variable when unset or malformed."""
        return _secret(self.backpack_api_secret, self.backpack_api_secret_file, "BACKPACK_API_SECRET")

    @property
    def callback_delay_cap(self) -> float:
        return self.callback_max_delay if self.callback_max_delay is not None else self.retry_max_delay

    def intake_token_secrets(self) -> dict[str, str]:
        """Bearer tokens of the intake by name, from INTAKE_TOKENS and INTAKE_TOKENS_FILE."""
        return _named_secrets(self.intake_tokens, self.intake_tokens_file, "INTAKE_TOKENS")

    def callback_secret_values(self) -> dict[str, str]:
        """Callback signing secrets by token name, from CALLBACK_SECRETS and CALLBACK_SECRETS_FILE."""
        return _named_secrets(self.callback_secrets, self.callback_secrets_file, "CALLBACK_SECRETS")


NAMED_SECRET_MIN = 16
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_named_secrets(items: Iterable[str]) -> dict[str, SecretStr]:
    """`name=secret` items -> {name: secret}. Messages name the entry, never its secret."""
    found: dict[str, SecretStr] = {}
    for number, item in enumerate(items, 1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, secret = item.partition("=")
        name, secret = name.strip(), secret.strip()
        if not sep or not _SECRET_NAME.fullmatch(name):
            raise ValueError(f"entry {number}: expected name=secret, the name of letters, digits, '_', '.', '-'")
        if len(secret) < NAMED_SECRET_MIN or any(ch.isspace() for ch in secret):
            raise ValueError(f"entry {name!r}: the secret must be at least {NAMED_SECRET_MIN} characters, "
                             "without spaces")
        if name in found:
            raise ValueError(f"entry {name!r} is given twice")
        found[name] = SecretStr(secret)
    return found


def _named_secrets(values: dict[str, SecretStr], path: Path | None, name: str) -> dict[str, str]:
    secrets = {key: value.get_secret_value() for key, value in values.items()}
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        try:
            from_file = parse_named_secrets(lines)
        except ValueError as exc:
            raise ConfigurationError(f"{name}_FILE: {exc}") from None
        for key, value in from_file.items():
            if key in secrets:
                raise ConfigurationError(f"{name}_FILE: entry {key!r} is also in {name}")
            secrets[key] = value.get_secret_value()
    return secrets


def contradictions(s: Settings) -> list[str]:
    """Settings that are each valid but cannot work together, one message per pair, naming the variables."""
    problems: list[str] = []
    # A countdown longer than the visibility timeout makes Redis redeliver the
    # retry message while a worker still holds it: it would then run twice.
    for name, delay in (("RETRY_MAX_DELAY", s.retry_max_delay), ("RECONCILE_MAX_DELAY", s.reconcile_max_delay),
                        ("CALLBACK_MAX_DELAY", s.callback_max_delay or 0.0)):
        if delay >= s.visibility_timeout:
            problems.append(f"{name} ({delay:g}s) must be below VISIBILITY_TIMEOUT ({s.visibility_timeout}s)")
    for first, cap, initial, maximum in (
        ("RETRY_INITIAL_DELAY", "RETRY_MAX_DELAY", s.retry_initial_delay, s.retry_max_delay),
        ("RECONCILE_INITIAL_DELAY", "RECONCILE_MAX_DELAY", s.reconcile_initial_delay, s.reconcile_max_delay),
    ):
        if initial is not None and initial > maximum:  # RECONCILE_INITIAL_DELAY unset: the document's retryAfter
            problems.append(f"{first} ({initial:g}s) must not exceed {cap} ({maximum:g}s)")
    # A message held past the visibility timeout is delivered again while its step still runs.
    if s.lease_ttl >= s.visibility_timeout:
        problems.append(f"LEASE_TTL ({s.lease_ttl:g}s) must be below VISIBILITY_TIMEOUT ({s.visibility_timeout}s)")
    # The sweep must not re-dispatch a job whose message Redis is about to redeliver anyway.
    if s.stall_after <= s.visibility_timeout:
        problems.append(f"STALL_AFTER ({s.stall_after:g}s) must exceed VISIBILITY_TIMEOUT ({s.visibility_timeout}s)")
    # One HTTP request must fit in the step's soft time limit, or the limit interrupts a
    # request that the exchange may be processing; the hard limit must end the step
    # before its lease lets another run of it start.
    http = s.http_connect_timeout + s.http_read_timeout
    if http >= s.task_soft_time_limit:
        problems.append(
            f"HTTP_CONNECT_TIMEOUT + HTTP_READ_TIMEOUT ({http:g}s) must be below the step's soft time limit "
            f"({s.task_soft_time_limit:g}s, {SOFT_LIMIT_SHARE:.0%} of LEASE_TTL={s.lease_ttl:g}s): "
            "raise LEASE_TTL or lower the timeouts"
        )
    if s.task_time_limit >= s.lease_ttl:
        problems.append(
            f"the step's hard time limit ({s.task_time_limit:g}s) must be below LEASE_TTL ({s.lease_ttl:g}s)"
        )
    for name, value, path in (
        ("BACKPACK_API_KEY", s.backpack_api_key, s.backpack_api_key_file),
        ("BACKPACK_API_SECRET", s.backpack_api_secret, s.backpack_api_secret_file),
    ):
        if value is not None and path is not None:
            problems.append(f"set {name} or {name}_FILE, not both")
    tls_files = [n for n, v in (("REDIS_CA_FILE", s.redis_ca_file), ("REDIS_CERT_FILE", s.redis_cert_file),
                                ("REDIS_KEY_FILE", s.redis_key_file)) if v is not None]
    if tls_files and urlsplit(s.redis_url).scheme != "rediss":
        problems.append(f"{', '.join(tls_files)} set but REDIS_URL is not rediss:// (TLS)")
    if (s.redis_cert_file is None) != (s.redis_key_file is None):
        problems.append("REDIS_CERT_FILE and REDIS_KEY_FILE go together")
    return problems


def _secret(value: SecretStr | None, path: Path | None, name: str) -> str:
    # Messages name the variable and never hold the value.
    if value is not None:
        return _key_format(value.get_secret_value().strip(), name)
    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"{name}_FILE: {path} is not text (expected base64)") from None
        return _key_format(text, f"{name}_FILE")
    raise ConfigurationError(f"{name}: not set (set {name} or {name}_FILE)")


def _key_format(text: str, name: str) -> str:
    """The key unchanged when it is base64 of 32 bytes (an ED25519 key or seed)."""
    if not text:
        raise ConfigurationError(f"{name}: empty")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{name}: not valid base64") from None
    if len(raw) != 32:
        raise ConfigurationError(f"{name}: must be base64 of 32 bytes, got {len(raw)}")
    return text


def load() -> Settings:
    """Read the environment, raising ConfigurationError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        # Each message names its variable; the input itself is never repeated (it may be a secret).
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigurationError(f"bad configuration: {problems}") from None


def _describe(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in err["loc"]).upper()
    return f"{where}: {message}" if where else message


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return load()
