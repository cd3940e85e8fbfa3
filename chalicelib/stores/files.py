"""The ``files`` table: OpenAI file objects, keyed by (owner, file_id).

The owner is part of the key, so another user's file is not *hidden* but simply not there: a
``GetItem`` with the caller's id finds nothing, as fast as for an id that never existed. Ids sort
by creation time (``file-<ms hex><random>``), so a ``Query`` on the owner lists newest first.
The bytes live in S3 (``ObjectStore``) under the record's ``key``.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError
from chalicelib.stores.dynamo import condition_failed, dynamo, plain

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class FileIdTakenError(StoreError):
    """A file with this id exists already."""


class FileConflictError(StoreError):
    """A conditional write on a file record lost (it changed or went away meanwhile)."""


def sortable_id(prefix: str, now: float | None = None) -> str:
    """``<prefix><12 hex digits of ms><16 random hex>``: unique, and ordered by creation."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{prefix}{ms:012x}{secrets.token_hex(8)}"


class FileStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def create(self, item: dict[str, Any]) -> dict[str, Any]:
        record = {"created_at": int(time.time()), **item}
        try:
            self._table.put_item(
                Item=dynamo(record), ConditionExpression="attribute_not_exists(file_id)"
            )
        except ClientError as exc:
            if condition_failed(exc):
                raise FileIdTakenError(f"file {item['file_id']} exists") from exc
            raise
        return record

    def get(self, owner: str, file_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(
            Key={"owner": owner, "file_id": file_id}, ConsistentRead=True
        ).get("Item")
        return plain(item) if item else None

    def list(
        self,
        owner: str,
        *,
        limit: int,
        after: str | None = None,
        purpose: str | None = None,
        newest_first: bool = True,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` of the owner's files after the id ``after``; and whether more exist."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":o": owner},
            "ScanIndexForward": not newest_first,
        }
        if purpose:
            kwargs["FilterExpression"] = "purpose = :p"
            kwargs["ExpressionAttributeValues"][":p"] = purpose
        if after:
            kwargs["ExclusiveStartKey"] = {"owner": owner, "file_id": after}
        found: list[dict[str, Any]] = []
        while len(found) <= limit:
            page = self._table.query(**kwargs, Limit=limit + 1)
            found += [plain(i) for i in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return found[:limit], len(found) > limit

    def count(self, owner: str, at_most: int) -> int:
        """How many files the owner has, counting no further than ``at_most``."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":o": owner},
            "Select": "COUNT",
        }
        n = 0
        while n < at_most:
            page = self._table.query(**kwargs)
            n += int(page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return min(n, at_most)

    def update(self, owner: str, file_id: str, fields: dict[str, Any], *, status: str) -> None:
        """Set ``fields`` on a file whose status is ``status`` (else ``FileConflictError``)."""
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":f{i}": v for i, v in enumerate(fields.values())}
        try:
            self._table.update_item(
                Key={"owner": owner, "file_id": file_id},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :f{i}" for i in range(len(fields))),
                ConditionExpression="attribute_exists(file_id) AND #s = :s",
                ExpressionAttributeNames={**names, "#s": "status"},
                ExpressionAttributeValues=dynamo({**values, ":s": status}),
            )
        except ClientError as exc:
            if condition_failed(exc):
                raise FileConflictError(f"file {file_id} is no longer {status}") from exc
            raise

    def delete(self, owner: str, file_id: str) -> dict[str, Any] | None:
        """Delete the record; the old record, or None when there was none."""
        out = self._table.delete_item(
            Key={"owner": owner, "file_id": file_id}, ReturnValues="ALL_OLD"
        )
        old = out.get("Attributes")
        return plain(old) if old else None
