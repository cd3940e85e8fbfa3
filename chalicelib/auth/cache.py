"""The ``auth-cache`` table: Globus introspection results shared by every API process.

Keyed by the SHA-256 of the token (the token itself is never stored); each item carries an
``expires_at`` TTL. AWS deletes expired items late and moto never does, so reads filter on it.
"""

from __future__ import annotations

import json
import time
from typing import Any


class IntrospectionCache:
    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, token_hash: str, now: float | None = None) -> tuple[dict[str, Any], int] | None:
        """The entry and when it expires (epoch seconds), or None when missing or expired."""
        item = self._table.get_item(Key={"token_hash": token_hash}).get("Item")
        if item is None:
            return None
        expires_at = int(item["expires_at"])
        if expires_at <= (time.time() if now is None else now):
            return None
        return json.loads(item["entry"]), expires_at

    def put(self, token_hash: str, entry: dict[str, Any], expires_at: float) -> None:
        self._table.put_item(
            Item={
                "token_hash": token_hash,
                "entry": json.dumps(entry, separators=(",", ":")),
                "expires_at": int(expires_at),
            }
        )
