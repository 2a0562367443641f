"""Two-factor tokens travel sealed: only the worker holding the API secret can open them.

The submitter seals the token to the account's public API key (its ED25519 key
converted to X25519, a libsodium sealed box), so Redis only ever holds
ciphertext, and the worker deletes even that once the withdrawal request has
used the token.
"""

from __future__ import annotations

import base64

from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey


def seal(token: str, api_key: str) -> bytes:
    public = VerifyKey(base64.b64decode(api_key)).to_curve25519_public_key()
    return SealedBox(PublicKey(bytes(public))).encrypt(token.encode())


def unseal(sealed: bytes, signing_key: SigningKey) -> str:
    private = signing_key.to_curve25519_private_key()
    return SealedBox(PrivateKey(bytes(private))).decrypt(sealed).decode()
