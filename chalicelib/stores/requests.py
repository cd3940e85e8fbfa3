"""The ``requests`` table: one item per request; status moves only forward, by conditional writes.

``queued → dispatched → completed | failed``. ``claim`` may re-claim a ``dispatched`` request:
the SQS visibility timeout is the lease, so a message that reappears means its poller died, and
the new holder takes over (``attempt`` + 1). ``complete``/``fail`` only succeed from a
non-terminal state, so a redelivered message never completes a request twice.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, cast

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from chalicelib.stores import StoreError

TERMINAL = ("completed", "failed")
_DESERIALIZE = TypeDeserializer()


class RequestConflictError(StoreError):
    """A conditional write lost: the request is not in the state the caller expected."""

    def __init__(self, message: str, current: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.current = current


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; hand out ints/floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _plain_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in item.items()}


def _dynamo(value: Any) -> Any:
    return json.loads(json.dumps(value), parse_float=Decimal)


class RequestStore:
    def __init__(self, table: Any, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self._table = table
        self._ttl_s = ttl_s

    def create(self, item: dict[str, Any]) -> None:
        now = time.time()
        record = {
            **item,
            "status": "queued",
            "attempt": 0,
            "created_at": round(now, 3),
            "expires_at": int(now) + self._ttl_s,
        }
        self._table.put_item(
            Item=_dynamo(record), ConditionExpression="attribute_not_exists(request_id)"
        )

    def get(self, request_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"request_id": request_id}, ConsistentRead=True).get("Item")
        if item is None or int(item.get("expires_at", 0)) < time.time():
            # AWS deletes expired TTL items late (moto never does): treat them as gone.
            return None
        return _plain_item(item)

    def get_owned(self, request_id: str, owner: str) -> dict[str, Any] | None:
        """The record if ``owner`` owns it, else None, and the same work either way.

        A ``Query`` with a filter on the owner: DynamoDB reads the item and drops it
        server-side, so a foreign id returns the same empty page as a missing one, and the
        time to answer cannot tell them apart (a ``GetItem`` returns the foreign item whole).
        """
        out = self._table.query(
            KeyConditionExpression="request_id = :id",
            FilterExpression="#o = :owner AND expires_at >= :now",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={
                ":id": request_id,
                ":owner": owner,
                ":now": int(time.time()),
            },
            ConsistentRead=True,
        )
        items = out.get("Items") or []
        return _plain(items[0]) if items else None

    def claim(self, request_id: str) -> dict[str, Any]:
        """queued|dispatched → dispatched, attempt + 1; returns the whole record (one call)."""
        return self._update(
            request_id,
            "SET #s = :dispatched, dispatched_at = :now ADD attempt :one",
            "#s IN (:queued, :dispatched)",
            {":dispatched": "dispatched", ":queued": "queued", ":one": 1},
            returns="ALL_NEW",
        )

    def complete(self, request_id: str, fields: dict[str, Any]) -> None:
        self._finish(request_id, "completed", fields)

    def fail(self, request_id: str, fields: dict[str, Any]) -> None:
        self._finish(request_id, "failed", fields)

    def _finish(self, request_id: str, status: str, fields: dict[str, Any]) -> None:
        # Nothing returned: the caller has the fields, and echoing the result back costs bytes.
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":f{i}": v for i, v in enumerate(fields.values())}
        sets = ", ".join(f"#f{i} = :f{i}" for i in range(len(fields)))
        self._update(
            request_id,
            f"SET #s = :status, finished_at = :now{', ' + sets if sets else ''}",
            "#s IN (:queued, :dispatched)",
            {":status": status, ":queued": "queued", ":dispatched": "dispatched", **values},
            names,
            returns="NONE",
        )

    def _update(
        self,
        request_id: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        *,
        returns: str,
    ) -> dict[str, Any]:
        try:
            out = self._table.update_item(
                Key={"request_id": request_id},
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(request_id) AND {condition}",
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues=_dynamo({**values, ":now": round(time.time(), 3)}),
                ReturnValues=returns,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            # Wire format: the resource layer leaves it raw. The stubs' error response has no
            # "Item" key; ReturnValuesOnConditionCheckFailure puts the old item there.
            old = cast("dict[str, Any] | None", exc.response.get("Item"))
            current = (
                _plain_item({k: _DESERIALIZE.deserialize(v) for k, v in old.items()})
                if old
                else None
            )
            state = current["status"] if current else "missing"
            raise RequestConflictError(f"request {request_id} is {state}", current) from exc
        return _plain_item(out.get("Attributes", {}))
