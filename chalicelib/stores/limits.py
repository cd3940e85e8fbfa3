"""The ``limits`` table: rate-limit counters, moved by atomic conditional ``ADD``s.

Each item of a plan (``chalicelib/limits.py``) is one ``UpdateItem`` that adds to all its counters
only if every one is still below its limit, and returns the new values (for the headers) or, when
refused, the values that refused. Check and increment are one atomic write, so there is no
check-then-write race. The items of one request go out side by side; if one refuses, what the
others added is taken back. Window items are keyed by their minute and carry a TTL; old windows
are never read again, so nothing depends on when (or whether: moto) they are deleted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from chalicelib.limits import WINDOW_S, ItemUpdate, Outcome, Plan, corrections
from chalicelib.stores.dynamo import condition_failed, old_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import Table

_DESERIALIZE = TypeDeserializer()
_IO = ThreadPoolExecutor(8, thread_name_prefix="limits-io")


def _ints(item: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in item.items() if isinstance(v, Decimal | int)}


class LimitStore:
    def __init__(self, table: Table) -> None:
        self._table = table

    def admit(self, plan: Plan, now: float | None = None) -> Outcome:
        now = time.time() if now is None else now
        if len(plan.updates) == 1:
            results = [self._apply(plan.updates[0], now)]
        else:
            futures = [_IO.submit(self._apply, u, now) for u in plan.updates]
            results = [f.result() for f in futures]
        counts = {u.key: values for u, (_, values) in zip(plan.updates, results, strict=True)}
        refused = next(
            (u for u, (ok, _) in zip(plan.updates, results, strict=True) if not ok), None
        )
        if refused is not None:
            for update, (ok, _) in zip(plan.updates, results, strict=True):
                if ok:
                    self._add(update.key, {c.attr: -c.amount for c in update.counters})
        return Outcome(counts, refused)

    def release(self, hold: dict[str, Any], used_tokens: int) -> None:
        """A request finished: correct its token estimate, give its concurrency slot (and its
        stream slot, for a streamed request) back."""
        for key, deltas in corrections(hold, used_tokens).items():
            self._add(key, deltas)
        for lease in (hold.get("inflight"), hold.get("streams")):
            if not lease:
                continue
            try:
                self._table.update_item(
                    Key={"pk": lease},
                    UpdateExpression="ADD inflight :minus",
                    ConditionExpression="inflight > :zero",
                    ExpressionAttributeValues={":minus": -1, ":zero": 0},
                )
            except ClientError as exc:
                # Already zero: the counter was reset after its lease ran out.
                if not condition_failed(exc):
                    raise

    def _apply(
        self, update: ItemUpdate, now: float, *, may_reset: bool = True
    ) -> tuple[bool, dict[str, int]]:
        names = {f"#c{i}": c.attr for i, c in enumerate(update.counters)}
        values: dict[str, Any] = {":exp": update.expires_at}
        conditions = []
        for i, c in enumerate(update.counters):
            values[f":a{i}"] = c.amount
            values[f":l{i}"] = c.limit
            conditions.append(f"(attribute_not_exists(#c{i}) OR #c{i} < :l{i})")
        adds = ", ".join(f"#c{i} :a{i}" for i in range(len(update.counters)))
        try:
            out = self._table.update_item(
                Key={"pk": update.key},
                UpdateExpression=f"ADD {adds} SET expires_at = :exp",
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            # Wire format: the resource layer leaves it raw.
            old = _ints({k: _DESERIALIZE.deserialize(v) for k, v in old_item(exc).items()})
            if update.lease and may_reset and old.get("expires_at", 0) <= now:
                return self._reset(update, now, old)
            return False, old
        return True, _ints(out["Attributes"])

    def _reset(
        self, update: ItemUpdate, now: float, old: dict[str, int]
    ) -> tuple[bool, dict[str, int]]:
        """The lease ran out with slots still counted (never released): start again from ours."""
        names = {f"#c{i}": c.attr for i, c in enumerate(update.counters)}
        values: dict[str, Any] = {":exp": update.expires_at, ":old": old.get("expires_at", 0)}
        sets = []
        for i, c in enumerate(update.counters):
            values[f":a{i}"] = c.amount
            sets.append(f"#c{i} = :a{i}")
        try:
            self._table.update_item(
                Key={"pk": update.key},
                UpdateExpression=f"SET {', '.join(sets)}, expires_at = :exp",
                ConditionExpression="expires_at = :old",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not condition_failed(exc):
                raise
            # Another process reset it first: count ourselves in the normal way.
            return self._apply(update, now, may_reset=False)
        return True, {c.attr: c.amount for c in update.counters}

    def _add(self, key: str, deltas: dict[str, int]) -> None:
        names = {f"#c{i}": attr for i, attr in enumerate(deltas)}
        values: dict[str, Any] = {f":d{i}": d for i, d in enumerate(deltas.values())}
        # A window item deleted by its TTL comes back from an ADD: give it a TTL again.
        values[":exp"] = int(time.time()) + 2 * WINDOW_S
        adds = ", ".join(f"#c{i} :d{i}" for i in range(len(deltas)))
        self._table.update_item(
            Key={"pk": key},
            UpdateExpression=f"ADD {adds} SET expires_at = if_not_exists(expires_at, :exp)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
