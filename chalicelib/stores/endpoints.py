"""The ``endpoints`` table: each endpoint's live status, shared by every poller.

One item per endpoint (``name``): ``inflight`` (requests running there, counted across pollers,
moved only inside the requests table's transactions: ``Slot``), ``failures`` (consecutive
infrastructure failures) with ``opened_at`` / ``probe_at`` for its circuit, ``last_seen`` (the
last heartbeat), ``models`` (model → hot | starting | cold | unavailable), ``ready_at`` (model →
when a starting one is expected hot, where the endpoint says), ``capacity``, and one
``warming#<model>`` per model a warm-up was asked for (when).
The router (``chalicelib/router.py``) decides over these values; this store only moves them.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.router import EndpointStatus
from chalicelib.stores.dynamo import from_wire, to_wire
from chalicelib.stores.requests import Slot

WARMING = "warming#"


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] == "ConditionalCheckFailedException"


class EndpointStore:
    def __init__(self, client: Any, table_name: str) -> None:
        self._ddb = client
        self.table_name = table_name

    def statuses(self) -> dict[str, EndpointStatus]:
        """Every endpoint's status (one small Scan; pollers cache it for a second)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            out = self._ddb.scan(**kwargs)
            items += [from_wire(i) for i in out.get("Items", [])]
            if "LastEvaluatedKey" not in out:
                break
            kwargs["ExclusiveStartKey"] = out["LastEvaluatedKey"]
        return {str(i["name"]): _status(i) for i in items}

    def slot(self, name: str, capacity: int) -> Slot:
        key = to_wire({"name": name})
        acquire = {
            "TableName": self.table_name,
            "Key": key,
            "UpdateExpression": "ADD inflight :one",
            "ConditionExpression": "attribute_not_exists(inflight) OR inflight < :capacity",
            "ExpressionAttributeValues": to_wire({":one": 1, ":capacity": capacity}),
        }
        release = {
            "TableName": self.table_name,
            "Key": key,
            "UpdateExpression": "ADD inflight :minus",
            "ExpressionAttributeValues": to_wire({":minus": -1}),
        }
        return Slot(name, acquire, release)

    def heartbeat(
        self,
        name: str,
        *,
        capacity: int,
        models: dict[str, str],
        ready_at: dict[str, float] | None = None,
        now: float | None = None,
    ) -> None:
        """The endpoint answered: it is online, with these models in these states."""
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            # Attribute names by placeholder: "capacity" is one of DynamoDB's reserved words.
            UpdateExpression=(
                "SET #seen = :now, #models = :models, #capacity = :capacity, #ready = :ready"
            ),
            ExpressionAttributeNames={
                "#seen": "last_seen",
                "#models": "models",
                "#capacity": "capacity",
                "#ready": "ready_at",
            },
            ExpressionAttributeValues=to_wire(
                {
                    ":now": time.time() if now is None else now,
                    ":models": models,
                    ":capacity": capacity,
                    ":ready": ready_at or {},
                }
            ),
        )

    def mark_warming(self, name: str, model: str, now: float | None = None) -> None:
        """A warm-up of ``model`` was asked for on endpoint ``name``: it reads as starting
        until the endpoint reports the model hot (or ``warm_timeout_s`` passes)."""
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            UpdateExpression="SET #w = :now",
            ExpressionAttributeNames={"#w": f"{WARMING}{model}"},
            ExpressionAttributeValues=to_wire({":now": time.time() if now is None else now}),
        )

    def clear_warming(self, name: str, model: str) -> None:
        """The warm-up ended (the model is hot, or its load failed)."""
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            UpdateExpression="REMOVE #w",
            ExpressionAttributeNames={"#w": f"{WARMING}{model}"},
        )

    def record_failure(self, name: str, failures_to_open: int, now: float | None = None) -> int:
        """One more consecutive infrastructure failure; opens (or re-opens) the circuit at N."""
        now = time.time() if now is None else now
        out = self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            UpdateExpression="ADD failures :one",
            ExpressionAttributeValues=to_wire({":one": 1}),
            ReturnValues="UPDATED_NEW",
        )
        failures = int(from_wire(out["Attributes"])["failures"])
        if failures >= failures_to_open:
            # A failed half-open probe lands here too: the cooldown starts again.
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression="SET opened_at = :now",
                ExpressionAttributeValues=to_wire({":now": now}),
            )
        return failures

    def record_success(self, name: str) -> None:
        """The circuit closes: consecutive failures back to zero (a write only when not zero)."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression="SET failures = :zero",
                ConditionExpression="failures > :zero",
                ExpressionAttributeValues=to_wire({":zero": 0}),
            )
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise

    def take_probe(self, name: str, open_until: float, now: float | None = None) -> bool:
        """The one probe of a half-open circuit: True for exactly one caller per cooldown."""
        now = time.time() if now is None else now
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression="SET probe_at = :now",
                ConditionExpression="attribute_not_exists(probe_at) OR probe_at < :open_until",
                ExpressionAttributeValues=to_wire({":now": now, ":open_until": open_until}),
            )
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
            return False
        return True


def _status(item: dict[str, Any]) -> EndpointStatus:
    return EndpointStatus(
        name=str(item["name"]),
        inflight=int(item.get("inflight", 0)),
        failures=int(item.get("failures", 0)),
        opened_at=float(item.get("opened_at", 0.0)),
        probe_at=float(item.get("probe_at", 0.0)),
        last_seen=float(item.get("last_seen", 0.0)),
        models={str(k): str(v) for k, v in (item.get("models") or {}).items()},
        ready_at={str(k): float(v) for k, v in (item.get("ready_at") or {}).items()},
        warming={
            k.removeprefix(WARMING): float(v) for k, v in item.items() if k.startswith(WARMING)
        },
    )
