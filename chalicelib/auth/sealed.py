"""A caller's bearer token kept where only the gateway can use it again: AES-256-GCM.

A WebSocket's ``$default`` messages carry no credentials (API Gateway passes headers to
``$connect`` only), yet each must be refused once its key is revoked or its Globus token
inactive, within the same bound as REST. So ``$connect`` keeps the token on the connection's
record, sealed under a key derived from the gateway's stream key, and every message unseals it
and authenticates again through the same authenticator (and caches) REST uses. The record holds
no usable secret: without the gateway's key the sealed text is noise, and a record edited or
moved to another connection fails to open (the connection id is authenticated data).

    base64url(12-byte nonce || ciphertext || 16-byte tag)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Its own key, derived from the stream key: the HMAC that signs capability tokens never meets
# the AES key that seals credentials.
_LABEL = b"first/connection-credential/v1"
NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed token that does not open: edited, another connection's, or another key's."""


def _aead(key: bytes) -> AESGCM:
    if not key:
        raise SealError("no key to seal with")
    return AESGCM(hmac.new(key, _LABEL, hashlib.sha256).digest())


def seal(key: bytes, token: str, context: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = _aead(key).encrypt(nonce, token.encode(), context.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal(key: bytes, text: str, context: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
        opened = _aead(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        return opened.decode()
    except (InvalidTag, ValueError) as exc:  # binascii.Error and UnicodeError are ValueErrors
        raise SealError("the sealed credential does not open") from exc
