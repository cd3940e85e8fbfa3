"""The ``keys`` table: API keys, stored only as SHA-256 hashes; and the keys' format.

A key is ``sk-first-`` + 32 random base62 characters (~190 bits) + 6 base62 characters of the
CRC32 of those 32 (GitHub's token format does the same). The checksum is no secret and no
protection against someone who means to guess: it lets the API refuse a mistyped, truncated or
made-up key without reading the table, so random keys cost no DynamoDB read.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

KEY_PREFIX = "sk-first-"
BASE62 = string.digits + string.ascii_letters
BODY_CHARS = 32
CHECKSUM_CHARS = 6  # 62**6 > 2**32: a CRC32 always fits
# The keys table's index by user (infra/resources.yaml): whose keys are active, for the drop folder.
USER_INDEX = "by-user"
_KEY = re.compile(
    rf"{re.escape(KEY_PREFIX)}(?P<body>[0-9A-Za-z]{{{BODY_CHARS}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_CHARS}}})"
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checksum(body: str) -> str:
    n = zlib.crc32(body.encode())
    digits = []
    for _ in range(CHECKSUM_CHARS):
        n, d = divmod(n, 62)
        digits.append(BASE62[d])
    return "".join(reversed(digits))


def new_key() -> str:
    body = "".join(secrets.choice(BASE62) for _ in range(BODY_CHARS))
    return KEY_PREFIX + body + checksum(body)


def well_formed(key: str) -> bool:
    """Whether ``key`` has the format and a matching checksum (says nothing of whether it
    exists): the test the API applies before spending a read on it."""
    match = _KEY.fullmatch(key)
    return match is not None and match["checksum"] == checksum(match["body"])


class KeyStore:
    def __init__(self, table: Table) -> None:
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
        key = new_key()
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

    def user_keys(self, user: str) -> list[dict[str, Any]]:
        """The active keys of ``user`` (what the ``by-user`` index holds of them: ``user``,
        ``kind``, ``groups``, ``domain``, ``active``). The index is eventually consistent: a
        key made or revoked a moment ago may not show yet."""
        kwargs: dict[str, Any] = {
            "IndexName": USER_INDEX,
            "KeyConditionExpression": "#u = :u",
            "ExpressionAttributeNames": {"#u": "user"},
            "ExpressionAttributeValues": {":u": user},
        }
        found: list[dict[str, Any]] = []
        while True:
            page = self._table.query(**kwargs)
            found += [dict(i) for i in page.get("Items", []) if i.get("active", True)]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def revoke(self, key_hash: str) -> None:
        self._table.update_item(
            Key={"key_hash": key_hash},
            UpdateExpression="SET active = :f",
            ExpressionAttributeValues={":f": False},
            ConditionExpression="attribute_exists(key_hash)",
        )
