"""The ``connections`` table: one item per open WebSocket connection (owner, principal, the
caller's credential sealed (``chalicelib.auth.sealed``), TTL).

Written at ``$connect``, read at each ``$default`` message (a Lambda has no memory of the
connection, and the message carries no credentials), deleted at ``$disconnect``. API Gateway closes a connection after 2 h at most, so
the TTL bounds what a lost ``$disconnect`` leaves behind; expired items are filtered in code
(AWS deletes them late, moto never).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.auth import Principal
from chalicelib.stores.dynamo import plain

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


@dataclass(frozen=True)
class Connection:
    principal: Principal
    # The bearer token it connected with, sealed; None on a record written without one.
    credential: str | None


class ConnectionStore:
    def __init__(self, table: Table, *, ttl_s: int = 2 * 3600) -> None:
        self._table = table
        self._ttl_s = ttl_s

    def put(self, connection_id: str, principal: Principal, credential: str | None = None) -> None:
        now = time.time()
        item: dict[str, Any] = {
            "connection_id": connection_id,
            "owner": principal.id,
            "principal": principal.to_item(),
            "connected_at": int(now),
            "expires_at": int(now) + self._ttl_s,
        }
        if credential is not None:
            item["credential"] = credential
        self._table.put_item(Item=item)

    def get(self, connection_id: str) -> Connection | None:
        """The connection, or None when it is gone or expired."""
        item = self._table.get_item(Key={"connection_id": connection_id}).get("Item")
        if item is None or int(plain(item.get("expires_at", 0))) < time.time():
            return None
        credential = item.get("credential")
        return Connection(
            Principal.from_item(plain(item["principal"])),
            str(credential) if credential is not None else None,
        )

    def delete(self, connection_id: str) -> None:
        self._table.delete_item(Key={"connection_id": connection_id})
