"""The ``keys`` table: API keys, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

KEY_PREFIX = "sk-first-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, table: Any) -> None:
        self._table = table

    def create(
        self,
        user: str,
        *,
        kind: str = "user",
        name: str | None = None,
        groups: list[str] | None = None,
        domain: str | None = None,
    ) -> str:
        """Create a key for ``user``; the plain key is returned once and never stored.

        ``groups`` and ``domain`` give the key's principal what a Globus identity would have, so
        model access rules and group limits apply to key holders the same way.
        """
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        item: dict[str, Any] = {
            "key_hash": hash_key(key),
            "user": user,
            "kind": kind,
            "name": name or user,
            "created_at": int(time.time()),
            "active": True,
        }
        if groups:
            item["groups"] = list(groups)
        if domain:
            item["domain"] = domain
        self._table.put_item(Item=item, ConditionExpression="attribute_not_exists(key_hash)")
        return key

    def lookup(self, key: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"key_hash": hash_key(key)}).get("Item")
        if item is None or not item.get("active", True):
            return None
        return dict(item)

    def revoke(self, key_hash: str) -> None:
        self._table.update_item(
            Key={"key_hash": key_hash},
            UpdateExpression="SET active = :f",
            ExpressionAttributeValues={":f": False},
            ConditionExpression="attribute_exists(key_hash)",
        )
