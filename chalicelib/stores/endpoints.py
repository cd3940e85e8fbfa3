"""The ``endpoints`` table: each endpoint's live status, shared by every poller.

One item per endpoint (``name``): ``inflight`` (its slots leased by pollers, counted across
pollers) with one ``lease#<poller>`` (slots) and ``lease_until#<poller>`` (epoch s) per poller
holding a lease and ``want#<poller>`` (epoch s) per poller that found it full (the leases:
``chalicelib/poller/capacity.py``), ``failures`` (consecutive
infrastructure failures) with ``opened_at`` / ``probe_at`` for its circuit, ``last_seen`` (the
last heartbeat), ``models`` (model → hot | starting | cold | unavailable), ``ready_at`` (model →
when a starting one is expected hot, where the endpoint says), ``capacity``, and one
``warming#<model>`` per model a warm-up was asked for (when), and one ``home#<affinity key>``
per conversation that moved here (when: ``router.home_of``; a key moved away again is read from
the newer one, and expired ones are removed by the next move written to the item).
The router (``chalicelib/router.py``) decides over these values; this store only moves them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.router import EndpointStatus, Lease
from chalicelib.stores import StoreError
from chalicelib.stores.dynamo import condition_failed, from_wire, old_item, to_wire

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

WARMING = "warming#"
LEASE, LEASE_UNTIL, WANT = "lease#", "lease_until#", "want#"
HOME = "home#"
# Expired homes removed by one move write at most (an update names each attribute it removes).
PRUNE_MAX = 50


class LeaseLostError(StoreError):
    """The poller's lease is not what it holds: a peer reclaimed it as expired."""


class EndpointStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
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

    def lease(
        self,
        name: str,
        holder: str,
        *,
        held: int,
        more: int,
        capacity: int,
        until: float,
    ) -> int:
        """Lease up to ``more`` further slots of endpoint ``name`` for ``holder`` (which holds
        ``held``), never past ``capacity`` in all; the slots granted (0 when it is full). One
        conditional update; a second with what is left when the first asked for too many."""
        while more > 0:
            try:
                self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_wire({"name": name}),
                    UpdateExpression="ADD inflight :more, #l :more SET #u = :until REMOVE #w",
                    ConditionExpression=(
                        f"(attribute_not_exists(inflight) OR inflight <= :room) AND {_mine(held)}"
                    ),
                    ExpressionAttributeNames=_names(holder, want=True),
                    ExpressionAttributeValues=to_wire(
                        {":more": more, ":room": capacity - more, ":until": until}
                        | ({":held": held} if held else {})
                    ),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if not condition_failed(exc):
                    raise
                old = from_wire(old_item(exc))
                _check_mine(old, name, holder, held)
                room = capacity - int(old.get("inflight", 0))
                if room >= more or room <= 0:
                    return 0  # full (or the count moved under us: the caller asks again)
                more = room
                continue
            return more
        return 0

    def give_back(self, name: str, holder: str, *, held: int, n: int) -> None:
        """``holder`` returns ``n`` of the ``held`` slots it leases (all: the lease ends)."""
        if n >= held:
            update, values = "ADD inflight :minus REMOVE #l, #u", {":minus": -held}
        else:
            update, values = "ADD inflight :minus, #l :minus", {":minus": -n}
        self._lease_update(name, holder, held, update, values)

    def renew(self, name: str, holder: str, *, held: int, until: float) -> None:
        """Keep ``holder``'s lease of ``held`` slots until ``until``."""
        self._lease_update(name, holder, held, "SET #u = :until", {":until": until})

    def restore(self, name: str, holder: str, *, n: int, until: float) -> None:
        """A lost lease counted again: ``n`` slots that are in use whatever the capacity says
        (requests running there), so the count matches what the endpoint runs."""
        self._lease_update(
            name,
            holder,
            0,
            "ADD inflight :n SET #l = :n, #u = :until",
            {":n": n, ":until": until},
        )

    def reclaim(self, name: str, holder: str, lease: Lease) -> bool:
        """Take back an expired lease of a poller that stopped renewing it (it died): True for
        exactly one caller, and only while the lease is still the one seen (``lease``)."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression="ADD inflight :minus REMOVE #l, #u",
                ConditionExpression="#l = :held AND #u = :until",
                ExpressionAttributeNames=_names(holder),
                ExpressionAttributeValues=to_wire(
                    {":minus": -lease.slots, ":held": lease.slots, ":until": lease.until}
                ),
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            return False
        return True

    def want(self, name: str, holder: str, now: float | None = None) -> None:
        """``holder`` found endpoint ``name`` full: holders above their fair share give back."""
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            UpdateExpression="SET #w = :now",
            ExpressionAttributeNames={"#w": f"{WANT}{holder}"},
            ExpressionAttributeValues=to_wire({":now": time.time() if now is None else now}),
        )

    def forget_want(self, name: str, holder: str, at: float) -> None:
        """Drop ``holder``'s ``want`` of ``at`` (a poller that is gone: its name is not reused)."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression="REMOVE #w",
                ConditionExpression="#w = :at",
                ExpressionAttributeNames={"#w": f"{WANT}{holder}"},
                ExpressionAttributeValues=to_wire({":at": at}),
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise

    def _lease_update(
        self, name: str, holder: str, held: int, update: str, values: dict[str, Any]
    ) -> None:
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_wire({"name": name}),
                UpdateExpression=update,
                ConditionExpression=_mine(held),
                ExpressionAttributeNames={
                    k: v for k, v in _names(holder).items() if k in update or k == "#l"
                },
                ExpressionAttributeValues=to_wire({**values, ":held": held} if held else values),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            old = from_wire(old_item(exc))
            raise LeaseLostError(
                f"{holder}'s lease on {name} is {old.get(LEASE + holder, 0)}, not {held}"
            ) from exc

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
            if not condition_failed(exc):
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
            if not condition_failed(exc):
                raise
            return False
        return True

    def move_home(
        self,
        name: str,
        key: str,
        *,
        expired: Sequence[str] = (),
        now: float | None = None,
    ) -> None:
        """Affinity key ``key``'s conversation now lives on endpoint ``name`` (one write per
        move, never per request); ``expired`` homes of that item go in the same write."""
        gone = [k for k in expired if k != key][:PRUNE_MAX]
        names = {"#h": f"{HOME}{key}", **{f"#x{i}": f"{HOME}{k}" for i, k in enumerate(gone)}}
        remove = f" REMOVE {', '.join(f'#x{i}' for i in range(len(gone)))}" if gone else ""
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_wire({"name": name}),
            UpdateExpression=f"SET #h = :now{remove}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_wire({":now": time.time() if now is None else now}),
        )


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
        leases={
            k.removeprefix(LEASE): Lease(int(v), float(item.get(LEASE_UNTIL + k[len(LEASE) :], 0)))
            for k, v in item.items()
            if k.startswith(LEASE)
        },
        wants={k.removeprefix(WANT): float(v) for k, v in item.items() if k.startswith(WANT)},
        homes={k.removeprefix(HOME): float(v) for k, v in item.items() if k.startswith(HOME)},
    )


def _names(holder: str, *, want: bool = False) -> dict[str, str]:
    names = {"#l": f"{LEASE}{holder}", "#u": f"{LEASE_UNTIL}{holder}"}
    return {**names, "#w": f"{WANT}{holder}"} if want else names


def _mine(held: int) -> str:
    """The condition that the holder's lease is the ``held`` slots it thinks it has."""
    return "#l = :held" if held else "attribute_not_exists(#l)"


def _check_mine(old: dict[str, Any], name: str, holder: str, held: int) -> None:
    current = int(old.get(LEASE + holder, 0))
    if current != held:
        raise LeaseLostError(f"{holder}'s lease on {name} is {current}, not {held}")
