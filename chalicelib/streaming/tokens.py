"""Per-request capability tokens: what lets an HPC node push to one client, and nothing else.

HPC nodes hold no AWS credentials. The poller mints, for each streaming task, a token naming the
request, the WebSocket connection, the client's reference and an expiry, signed with HMAC-SHA256
under a key only the gateway holds (``Settings.stream_key``). The relay verifies it with no I/O
and posts only to the connection the token names: a node can push to its own request's client
and nobody else's, until the token expires. ::

    <base64url(JSON claims)>.<base64url(HMAC-SHA256(key, first part))>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass


class StreamTokenError(ValueError):
    """A capability token that is malformed, forged or expired (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamClaims:
    request_id: str
    connection_id: str
    client_ref: str | None
    expires_at: int
    # The stream dialect (chalicelib.protocol.dialects) the relay renders pushes in.
    dialect: str = "chat"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def mint(key: bytes, claims: StreamClaims) -> str:
    body = {
        "r": claims.request_id,
        "c": claims.connection_id,
        "i": claims.client_ref,
        "x": claims.expires_at,
        **({"d": claims.dialect} if claims.dialect != "chat" else {}),
    }
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_sign(key, payload)}"


def mint_for(
    key: bytes,
    request_id: str,
    connection_id: str,
    client_ref: str | None,
    ttl_s: int,
    now: float | None = None,
    dialect: str = "chat",
) -> str:
    expires_at = int(time.time() if now is None else now) + ttl_s
    return mint(key, StreamClaims(request_id, connection_id, client_ref, expires_at, dialect))


def verify(key: bytes, token: str, now: float | None = None) -> StreamClaims:
    """The claims of a genuine, unexpired token; else ``StreamTokenError``."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise StreamTokenError("malformed")
    # Compared before anything of the payload is trusted or even parsed.
    if not hmac.compare_digest(signature, _sign(key, payload)):
        raise StreamTokenError("bad signature")
    try:
        body = json.loads(_unb64(payload))
        claims = StreamClaims(
            request_id=str(body["r"]),
            connection_id=str(body["c"]),
            client_ref=None if body.get("i") is None else str(body["i"]),
            expires_at=int(body["x"]),
            dialect=str(body.get("d") or "chat"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StreamTokenError("malformed") from exc
    if claims.expires_at <= (time.time() if now is None else now):
        raise StreamTokenError("expired")
    return claims
