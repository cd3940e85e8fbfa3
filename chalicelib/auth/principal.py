"""The ``Principal`` and the authenticator seam (API keys now, Globus Auth tokens next)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from chalicelib.errors import AuthenticationError


@dataclass(frozen=True)
class Principal:
    id: str
    username: str
    kind: Literal["user", "service"] = "user"
    idp_domain: str | None = None
    groups: frozenset[str] = field(default_factory=frozenset)

    def to_item(self) -> dict[str, Any]:
        """The principal as a DynamoDB map (a batch's or a WebSocket connection's record holds
        it, so the worker and later messages apply the models' access rules to the caller).

        ``groups`` is a sorted list, always present (an empty list is a valid attribute; an
        empty string set is not); ``idp_domain`` is left out when there is none rather than
        stored as NULL."""
        item: dict[str, Any] = {
            "id": self.id,
            "username": self.username,
            "kind": self.kind,
            "groups": sorted(self.groups),
        }
        if self.idp_domain:
            item["idp_domain"] = self.idp_domain
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Principal:
        """The principal from ``to_item``'s map, and from the maps older code wrote: a NULL
        ``idp_domain``, no ``groups`` (or a string set), no ``username`` or ``kind`` (the
        drop folder's record of an unknown owner holds only ``id`` and ``username``)."""
        kind: Literal["user", "service"] = "service" if item.get("kind") == "service" else "user"
        groups: Iterable[Any] = item.get("groups") or ()
        domain = item.get("idp_domain")
        return cls(
            id=str(item["id"]),
            username=str(item.get("username") or item["id"]),
            kind=kind,
            idp_domain=str(domain) if domain else None,
            groups=frozenset(str(g) for g in groups),
        )


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
