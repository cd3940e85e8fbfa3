"""The ``Principal`` and the authenticator seam (API keys now, Globus Auth tokens next)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from chalicelib.errors import AuthenticationError


@dataclass(frozen=True)
class Principal:
    id: str
    username: str
    kind: Literal["user", "service"] = "user"
    idp_domain: str | None = None
    groups: frozenset[str] = field(default_factory=frozenset)


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal:
        """The principal for ``token``, or raise ``AuthenticationError``."""
        ...


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token from ``Authorization: Bearer …`` (header names are case-insensitive)."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not value:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Malformed Authorization header; expected 'Bearer YOUR_KEY'.")
    return token.strip()


def api_key_token(headers: Mapping[str, str]) -> str:
    """The token as Anthropic's clients send it: ``x-api-key: …`` (the anthropic SDK) or
    ``Authorization: Bearer …`` (Claude Code with ``ANTHROPIC_AUTH_TOKEN``); a key or a Globus
    token either way."""
    value = next((v for k, v in headers.items() if k.lower() == "x-api-key"), None)
    if value is not None and value.strip():
        return value.strip()
    if not any(k.lower() == "authorization" for k in headers):
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'x-api-key: YOUR_KEY' or "
            "'Authorization: Bearer YOUR_KEY'."
        )
    return bearer_token(headers)
