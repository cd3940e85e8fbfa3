"""The ``batches`` table: one item per batch, keyed by (owner, batch_id); shards are counted on it.

Status moves only forward, by conditional writes::

    validating → in_progress → finalizing → completed
    validating → failed
    validating | in_progress → cancelling → cancelled
    in_progress → expired

Each transition stamps ``<status>_at``. A shard's result is counted by one conditional update
that adds its number to ``done_shards`` and its line counts to the counters together, on the
condition that the number is not there yet: a shard reported twice (a redelivered message, a
worker that restarted) is counted once.

The drop folder keeps one item per owner and name in a partition no user owns (``drop#<owner>``,
sort key the name): ``holder``, the batch of the newest version (largest ``sequencer``) and so
the only one that may write ``outbox/<owner>/NAME.*``; ``previous``, the holder it replaced; and
a publish lease (``publisher``, ``publish_until``) that a batch takes around each outbox write,
so a write the old holder began before it was replaced ends before the new holder's begins.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from chalicelib.stores import StoreError
from chalicelib.stores.dynamo import condition_failed, dynamo, old_item, plain

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "cancelled", "expired")
_DESERIALIZE = TypeDeserializer()


class BatchExistsError(StoreError):
    """A batch with this id exists already (the drop folder's duplicate events land here)."""


class BatchConflictError(StoreError):
    """A conditional write on a batch lost: it is not in the state the caller expected."""

    def __init__(self, message: str, current: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class DropClaim:
    """Who holds a drop name after a claim: ``won`` when it is the claiming batch (now or
    before), ``previous`` the batch it replaced (to be superseded; None when none)."""

    won: bool
    holder: str
    previous: str | None = None


Gate = Literal["open", "superseded", "busy", "unclaimed"]


def _old(exc: ClientError) -> dict[str, Any]:
    return {k: _DESERIALIZE.deserialize(v) for k, v in old_item(exc).items()}


def _drop_key(owner: str, name: str) -> dict[str, str]:
    return {"owner": f"drop#{owner}", "batch_id": name}


class BatchStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def create(self, item: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        record = {
            "status": "validating",
            "created_at": now,
            "completed_count": 0,
            "failed_count": 0,
            "total": 0,
            **item,
        }
        try:
            self._table.put_item(
                Item=dynamo(record), ConditionExpression="attribute_not_exists(batch_id)"
            )
        except ClientError as exc:
            if condition_failed(exc):
                raise BatchExistsError(f"batch {item['batch_id']} exists") from exc
            raise
        return record

    def claim_source(self, source: str, batch_id: str) -> tuple[str, bool]:
        """Bind ``source`` (a drop-folder object version) to ``batch_id`` once: the batch id it
        is bound to, and whether this call bound it. The marker lives in a partition no user
        owns (``source#…``), so listing a user's batches never sees it."""
        key = {"owner": f"source#{source}", "batch_id": "-"}
        try:
            self._table.put_item(
                Item={**key, "target": batch_id, "created_at": int(time.time())},
                ConditionExpression="attribute_not_exists(batch_id)",
            )
            return batch_id, True
        except ClientError as exc:
            if not condition_failed(exc):
                raise
        item = self._table.get_item(Key=key, ConsistentRead=True)["Item"]
        return str(item["target"]), False

    def claim_drop_name(self, owner: str, name: str, sequence: str, batch_id: str) -> DropClaim:
        """Make ``batch_id`` the holder of ``owner``'s drop name ``name`` if ``sequence`` (a
        ``drop.sequence_key``) is larger than the holder's; "" (no sequencer): by arrival.
        Claiming again is harmless: the same answer, ``previous`` included."""
        ordered = "sequencer < :s" if sequence else "holder <> :b"
        try:
            out = self._table.update_item(
                Key=_drop_key(owner, name),
                UpdateExpression=(
                    "SET previous = if_not_exists(holder, :none), holder = :b, sequencer = :s, "
                    "claimed_at = :now"
                ),
                ConditionExpression=f"attribute_not_exists(holder) OR {ordered}",
                ExpressionAttributeValues={
                    ":b": batch_id,
                    ":s": sequence,
                    ":none": "",
                    ":now": int(time.time()),
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            old = _old(exc)
            holder = str(old.get("holder") or "")
            if holder != batch_id:
                return DropClaim(False, holder)
            # Claimed before (a redelivered event): the batch it replaced then is still the one.
            previous = str(old.get("previous") or "")
        else:
            previous = str(out["Attributes"].get("previous") or "")
        return DropClaim(True, batch_id, previous if previous not in ("", batch_id) else None)

    def begin_publish(
        self, owner: str, name: str, batch_id: str, lease_s: float
    ) -> tuple[Gate, str]:
        """Take the publish lease of a drop name for ``batch_id``: ``("open", token)`` when it
        holds the name and no other write is under way (or its lease ran out); else why not.
        Give the token back with ``end_publish``."""
        token = f"{batch_id}/{uuid.uuid4().hex}"
        now = time.time()
        try:
            self._table.update_item(
                Key=_drop_key(owner, name),
                UpdateExpression="SET publisher = :t, publish_until = :until",
                ConditionExpression=(
                    "holder = :b AND (attribute_not_exists(publish_until) OR publish_until < :now)"
                ),
                ExpressionAttributeValues=dynamo(
                    {":t": token, ":b": batch_id, ":now": now, ":until": now + lease_s}
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            old = _old(exc)
            if not old.get("holder"):
                return "unclaimed", ""
            return ("busy" if old["holder"] == batch_id else "superseded"), ""
        return "open", token

    def end_publish(self, owner: str, name: str, token: str) -> None:
        """Give a publish lease back (not if it ran out and another writer has it now)."""
        try:
            self._table.update_item(
                Key=_drop_key(owner, name),
                UpdateExpression="REMOVE publisher, publish_until",
                ConditionExpression="publisher = :t",
                ExpressionAttributeValues={":t": token},
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise

    def get(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(
            Key={"owner": owner, "batch_id": batch_id}, ConsistentRead=True
        ).get("Item")
        return plain(item) if item else None

    def list(
        self, owner: str, *, limit: int, after: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` of the owner's batches, newest first, after the id ``after``."""
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":o": owner},
            "ScanIndexForward": False,
            "Limit": limit + 1,
        }
        if after:
            kwargs["ExclusiveStartKey"] = {"owner": owner, "batch_id": after}
        page = self._table.query(**kwargs)
        items = [plain(i) for i in page.get("Items", [])]
        return items[:limit], len(items) > limit

    def transition(
        self,
        owner: str,
        batch_id: str,
        to: str,
        allowed_from: tuple[str, ...],
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``allowed_from`` → ``to``, stamping ``<to>_at`` and setting ``fields``; the new item."""
        fields = {**(fields or {}), f"{to}_at": int(time.time())}
        return self._update(
            owner,
            batch_id,
            "SET #s = :to, " + ", ".join(f"#f{i} = :f{i}" for i in range(len(fields))),
            "#s IN (" + ", ".join(f":a{i}" for i in range(len(allowed_from))) + ")",
            {
                ":to": to,
                **{f":a{i}": s for i, s in enumerate(allowed_from)},
                **{f":f{i}": v for i, v in enumerate(fields.values())},
            },
            {f"#f{i}": k for i, k in enumerate(fields)},
        )

    def set_fields(
        self, owner: str, batch_id: str, fields: dict[str, Any], *, status: str
    ) -> dict[str, Any]:
        """Set ``fields`` while the batch is in ``status``; the new item."""
        return self._update(
            owner,
            batch_id,
            "SET " + ", ".join(f"#f{i} = :f{i}" for i in range(len(fields))),
            "#s = :status",
            {":status": status, **{f":f{i}": v for i, v in enumerate(fields.values())}},
            {f"#f{i}": k for i, k in enumerate(fields)},
        )

    def place_shard(
        self, owner: str, batch_id: str, shard: int, endpoint: str, attempt: int
    ) -> None:
        """Note where shard ``shard``'s try ``attempt`` runs (``shard_endpoints``, made when the
        batch went in_progress), so a worker that resumes the batch attaches to it."""
        try:
            self._update(
                owner,
                batch_id,
                "SET shard_endpoints.#n = :placed",
                "attribute_exists(shard_endpoints)",
                {":placed": [endpoint, attempt]},
                {"#n": str(shard)},
            )
        except BatchConflictError as exc:
            if exc.current is None:
                raise

    def record_shard(
        self, owner: str, batch_id: str, shard: int, completed: int, failed: int
    ) -> dict[str, Any] | None:
        """Count a finished shard once: the new item, or None when it was counted before."""
        try:
            return self._update(
                owner,
                batch_id,
                "ADD done_shards :shard, completed_count :c, failed_count :f",
                "NOT contains(done_shards, :n)",
                {":shard": {shard}, ":n": shard, ":c": completed, ":f": failed},
                {},
            )
        except BatchConflictError as exc:
            if exc.current is None:
                raise
            return None

    def _update(
        self,
        owner: str,
        batch_id: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str],
    ) -> dict[str, Any]:
        # Sets go as they are (a number set); everything else through the Decimal conversion.
        converted = {k: v if isinstance(v, set) else dynamo(v) for k, v in values.items()}
        kwargs: dict[str, Any] = {}
        all_names = {**({"#s": "status"} if "#s" in update + condition else {}), **names}
        if all_names:
            kwargs["ExpressionAttributeNames"] = all_names
        try:
            out = self._table.update_item(
                Key={"owner": owner, "batch_id": batch_id},
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(batch_id) AND ({condition})",
                ExpressionAttributeValues=converted,
                **kwargs,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            old = _old(exc)
            current = plain(old) if old else None
            state = current["status"] if current else "missing"
            raise BatchConflictError(f"batch {batch_id} is {state}", current) from exc
        return cast("dict[str, Any]", plain(out.get("Attributes", {})))
