"""Settings: every knob, its default and meaning, read from the environment in one place.

Each setting is read from the environment variable of the same name in upper
case (`redis_url` <- `REDIS_URL`). `Settings()` validates all of them at once
and names each bad variable. The README's configuration table mirrors this
class.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated

from bpx_worker.errors import ConfigurationError

DEV_SANDBOX_URL = "http://127.0.0.1:8765"
PRODUCTION_URL = "https://api.backpack.exchange"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Where things are
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker, result store and job records.")
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

    # Ambiguous withdrawal outcome: how long to look it up by clientId before needs_review.
    lookup_deadline: float = Field(120.0, gt=0)

    # Delivery
    visibility_timeout: int = Field(900, ge=10, description="Redis unacked redelivery, seconds.")
    lease_ttl: float = Field(60.0, gt=0, description="Lease on a job's step while it runs.")
    sweep_interval: float = Field(60.0, gt=0, description="How often beat looks for stalled jobs.")
    stall_after: float = Field(1200.0, gt=0, description="An unfinished job unchanged this long is re-dispatched.")
    worker_concurrency: int = Field(2, ge=1)
    job_retention: int = Field(7 * 24 * 3600, gt=0, description="Seconds a job record is kept after it ends.")
    redis_socket_timeout: float = Field(10.0, gt=0)

    # Safety limits
    max_quantity: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)
    allowed_destinations: Annotated[frozenset[str] | None, NoDecode] = None

    # Logs
    log_level: str = "INFO"
    log_format: str = Field("console", pattern="^(console|json)$")

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

    @model_validator(mode="after")
    def _countdowns_below_visibility_timeout(self) -> "Settings":
        # A countdown longer than the visibility timeout makes Redis redeliver the
        # retry message while a worker still holds it: it would then run twice.
        longest = max(self.retry_max_delay, self.reconcile_max_delay)
        if longest >= self.visibility_timeout:
            raise ValueError(
                f"retry/reconcile max delay ({longest}s) must be below VISIBILITY_TIMEOUT ({self.visibility_timeout}s)"
            )
        if self.lease_ttl >= self.visibility_timeout:
            raise ValueError(f"LEASE_TTL ({self.lease_ttl}s) must be below VISIBILITY_TIMEOUT")
        if self.stall_after <= self.visibility_timeout:
            raise ValueError(f"STALL_AFTER ({self.stall_after}s) must exceed VISIBILITY_TIMEOUT")
        return self

    def api_key(self) -> str:
        return _secret(self.backpack_api_key, self.backpack_api_key_file, "BACKPACK_API_KEY")

    def api_secret(self) -> str:
        return _secret(self.backpack_api_secret, self.backpack_api_secret_file, "BACKPACK_API_SECRET")


def _secret(value: SecretStr | None, path: Path | None, name: str) -> str:
    if value is not None:
        return value.get_secret_value().strip()
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    raise ConfigurationError(f"set {name} or {name}_FILE")


def load() -> Settings:
    """Read the environment, raising ConfigurationError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"bad configuration: {problems}") from None


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return load()
