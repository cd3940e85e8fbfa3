"""The ``connections`` table: one item per open WebSocket connection (owner, principal, TTL).

Written at ``$connect``, read at each ``$default`` message (a Lambda has no memory of the
connection), deleted at ``$disconnect``. API Gateway closes a connection after 2 h at most, so
the TTL bounds what a lost ``$disconnect`` leaves behind; expired items are filtered in code
(AWS deletes them late, moto never).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from chalicelib.auth import Principal


def principal_fields(principal: Principal) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": principal.id,
        "username": principal.username,
        "kind": principal.kind,
        "groups": sorted(principal.groups),
    }
    if principal.idp_domain:
        fields["idp_domain"] = principal.idp_domain
    return fields


def principal_from(fields: dict[str, Any]) -> Principal:
    kind: Literal["user", "service"] = "service" if fields.get("kind") == "service" else "user"
    return Principal(
        id=str(fields["id"]),
        username=str(fields.get("username") or fields["id"]),
        kind=kind,
        idp_domain=fields.get("idp_domain"),
        groups=frozenset(str(g) for g in fields.get("groups") or []),
    )


class ConnectionStore:
    def __init__(self, table: Any, *, ttl_s: int = 2 * 3600) -> None:
        self._table = table
        self._ttl_s = ttl_s

    def put(self, connection_id: str, principal: Principal) -> None:
        now = time.time()
        self._table.put_item(
            Item={
                "connection_id": connection_id,
                "owner": principal.id,
                "principal": principal_fields(principal),
                "connected_at": int(now),
                "expires_at": int(now) + self._ttl_s,
            }
        )

    def principal(self, connection_id: str) -> Principal | None:
        """The connection's principal, or None when it is gone or expired."""
        item = self._table.get_item(Key={"connection_id": connection_id}).get("Item")
        if item is None or int(item.get("expires_at", 0)) < time.time():
            return None
        return principal_from(dict(item["principal"]))

    def delete(self, connection_id: str) -> None:
        self._table.delete_item(Key={"connection_id": connection_id})
