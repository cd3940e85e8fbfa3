"""The ``responses`` table: stored Responses API responses, keyed by (owner, response_id).

The owner is part of the key (as for files): another user's response is not hidden but simply
not there, as fast as an id that never existed. An item holds what a later turn needs to rebuild
its conversation (``previous_response_id``): the response's own input items and the response
object (its output), each inline when small and in S3 when not (``BlobStore.fields``), plus the
gateway request that computes it (``request_id``) while it runs in the background.

Stored responses expire ``responses_ttl_s`` after creation (``expires_at``, the table's TTL); as
DynamoDB deletes expired items late, reads filter on it too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError
from chalicelib.stores.dynamo import dynamo, plain

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table


class ResponseIdTakenError(StoreError):
    """A response with this id exists already."""


class ResponseStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def create(self, item: dict[str, Any]) -> dict[str, Any]:
        try:
            self._table.put_item(
                Item=dynamo(item), ConditionExpression="attribute_not_exists(response_id)"
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ResponseIdTakenError(f"response {item['response_id']} exists") from exc
            raise
        return item

    def get(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """The owner's unexpired response, else None."""
        item = self._table.get_item(
            Key={"owner": owner, "response_id": response_id}, ConsistentRead=True
        ).get("Item")
        if not item or int(plain(item.get("expires_at")) or 0) < time.time():
            return None
        return dict(plain(item))

    def update(self, owner: str, response_id: str, fields: dict[str, Any]) -> None:
        """Set ``fields`` on an existing item (nothing when it was deleted meanwhile)."""
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":f{i}": v for i, v in enumerate(fields.values())}
        try:
            self._table.update_item(
                Key={"owner": owner, "response_id": response_id},
                UpdateExpression="SET " + ", ".join(f"#f{i} = :f{i}" for i in range(len(fields))),
                ConditionExpression="attribute_exists(response_id)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=dynamo(values),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def delete(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """Delete the owner's response; the item it was, or None when there was none."""
        out = self._table.delete_item(
            Key={"owner": owner, "response_id": response_id}, ReturnValues="ALL_OLD"
        )
        old = out.get("Attributes")
        if not old or int(plain(old.get("expires_at")) or 0) < time.time():
            return None
        return dict(plain(old))
