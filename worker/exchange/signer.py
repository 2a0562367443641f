"""ED25519 request signing for the Backpack Exchange.

The signing string (see the exchange's Authentication docs) is::

    instruction=<instruction>[&<sorted key=value pairs>]&timestamp=<ms>&window=<ms>

where the pairs are the query parameters of a GET or the top-level fields of a
JSON body, sorted by key, booleans written lowercase, absent (None) values left
out. Every request signs its own instruction and parameters, so each request
gets its own signature: one signature can never be shared between calls.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from bpx_worker.errors import ConfigurationError

DEFAULT_WINDOW_MS = 5000
MAX_WINDOW_MS = 60000


def render(value: Any) -> str:
    """One parameter value as the exchange reads it: booleans lowercase, everything else `str`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def rendered(params: Mapping[str, Any]) -> dict[str, str]:
    """The parameters as signed, absent (None) values left out.

    The client writes query values on the wire from this same mapping, so what
    the exchange receives is exactly what was signed (a boolean is `true`, never `True`).
    """
    return {str(k): render(v) for k, v in params.items() if v is not None}


def signing_string(
    instruction: str, params: Mapping[str, Any], timestamp: int, window: int
) -> str:
    """The exact string the exchange verifies, for one request."""
    pairs = [f"{k}={v}" for k, v in sorted(rendered(params).items())]
    head = "&".join([f"instruction={instruction}", *pairs])
    return f"{head}&timestamp={timestamp}&window={window}"


def check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW_MS:
        raise ValueError(f"window must be an integer from 1 to {MAX_WINDOW_MS} ms, got {window!r}")
    return window


def _decode_key(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{what} is not valid base64") from None
    if len(raw) != 32:
        raise ConfigurationError(f"{what} must decode to 32 bytes, got {len(raw)}")
    return raw


def verify_key_from_api_key(api_key: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(_decode_key(api_key, "API key"))


def verify(api_key: str, message: str, signature_b64: str) -> bool:
    """True when `signature_b64` is a valid signature of `message` by `api_key`."""
    try:
        key = verify_key_from_api_key(api_key)
        key.verify(message.encode(), base64.b64decode(signature_b64, validate=True))
    except (ConfigurationError, nacl.exceptions.BadSignatureError, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Signer:
    """Holds the key pair. `repr` never shows the secret."""

    api_key: str
    _signing_key: nacl.signing.SigningKey = field(repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @classmethod
    def from_secret(
        cls, api_key: str, secret: str, clock: Callable[[], float] = time.time
    ) -> Signer:
        signing_key = nacl.signing.SigningKey(_decode_key(secret, "API secret"))
        expected = base64.b64encode(bytes(signing_key.verify_key)).decode()
        if api_key.strip() != expected:
            raise ConfigurationError("API key does not match the API secret's public key")
        return cls(expected, signing_key, clock)

    @classmethod
    def generate(cls, clock: Callable[[], float] = time.time) -> tuple[Signer, str]:
        """A fresh key pair: (signer, base64 secret). For the sandbox and tests."""
        signing_key = nacl.signing.SigningKey.generate()
        secret = base64.b64encode(bytes(signing_key)).decode()
        return cls.from_secret(
            base64.b64encode(bytes(signing_key.verify_key)).decode(), secret, clock
        ), secret

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def open_sealed(self, sealed: bytes) -> str:
        """Open a value sealed to this key pair (see `worker.twofactor`)."""
        from bpx_worker.exchange.twofactor import unseal

        return unseal(sealed, self._signing_key)

    def sign(self, message: str) -> str:
        return base64.b64encode(self._signing_key.sign(message.encode()).signature).decode()

    def headers(
        self,
        instruction: str,
        params: Mapping[str, Any],
        window: int = DEFAULT_WINDOW_MS,
        timestamp: int | None = None,
    ) -> dict[str, str]:
        """The four authentication headers for one request."""
        check_window(window)
        ts = self.now_ms() if timestamp is None else timestamp
        signature = self.sign(signing_string(instruction, params, ts, window))
        return {
            "X-API-KEY": self.api_key,
            "X-SIGNATURE": signature,
            "X-TIMESTAMP": str(ts),
            "X-WINDOW": str(window),
        }
