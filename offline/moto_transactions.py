"""Roll back a failed DynamoDB transaction from the items it addressed, not a copy of its tables.

moto's ``transact_write_items`` deep-copies every table a transaction touches before it starts,
to swap the copies back in if an operation fails. The gateway runs two transactions per request
(take a slot with the record, complete with the slot given back), so each request costs two
copies of the whole requests table: the embedded server slows down as the table grows
(measured: 11 → 1.7 requests/s over a 2,000-request replay; docs/operations.md).

The embedded server instead snapshots, before moto runs the transaction, only the items the
transaction's operations address (ConditionCheck, Put, Delete, Update, by their primary key):
a deep copy of each that exists, or "absent". moto's own code still performs the operations;
on any failure the snapshot puts the copies back and deletes what was absent. That is O(items
touched). It is exact because a transaction changes nothing else in a table: moto's indexes
(GSI, LSI) are read from the items at query time, item count and size are computed from them.
A table with a stream, or an operation whose key cannot be read from its request (moto then
rejects it), falls back to moto's whole-table copy. DynamoDB calls are serialized by the server
(``AtomicDynamoDB``), so no other call sees a transaction half-applied.

One difference from moto's copy: an item a failed transaction had deleted comes back last in
the table's scan order (DynamoDB promises no scan order).
"""

from __future__ import annotations

import copy
import inspect
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import moto.dynamodb.models as ddb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

_ABSENT = None  # snapshot value of a key that held no item

_state = threading.local()


def _deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    # moto's transact_write_items deep-copies each table it touches; while our snapshot stands
    # in for that copy, hand the table back as is (its rollback then swaps a table for itself).
    if isinstance(value, Table) and getattr(_state, "snapshotting", False):
        return value
    return copy.deepcopy(value, memo)


@dataclass
class _TableSnapshot:
    table: Table
    # (hash, range) -> deep copy of the item, or None where no item was stored.
    items: dict[tuple[DynamoType, DynamoType | None], Item | None] = field(default_factory=dict)
    # Hash keys of a hash+range table that had no entry (moto's defaultdict adds one on read).
    new_hashes: set[DynamoType] = field(default_factory=set)

    def record(self, hash_key: DynamoType, range_key: DynamoType | None) -> None:
        if (hash_key, range_key) in self.items:
            return
        # hash -> Item, or hash -> {range -> Item} in a hash+range table.
        stored: Any = self.table.items.get(hash_key)
        if range_key is None:
            item = stored
        else:
            if stored is None:
                self.new_hashes.add(hash_key)
            item = stored.get(range_key) if stored is not None else None
        self.items[hash_key, range_key] = copy.deepcopy(item) if item is not None else _ABSENT

    def restore(self) -> None:
        items: dict[Any, Any] = self.table.items
        for (hash_key, range_key), item in self.items.items():
            if range_key is None:
                if item is None:
                    items.pop(hash_key, None)
                else:
                    items[hash_key] = item
            elif item is None:
                if hash_key in items:
                    items[hash_key].pop(range_key, None)
            else:
                items[hash_key][range_key] = item
        for hash_key in self.new_hashes:
            if hash_key in items and not items[hash_key]:
                del items[hash_key]


def _key_of(table: Table, op_type: str, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    """The primary key an operation addresses, as moto indexes the table's items by it."""
    attrs = op["Item"] if op_type == "Put" else op["Key"]
    hash_key = DynamoType(attrs[table.hash_key_attr])
    range_key = None
    if table.range_key_attr is not None:
        range_key = DynamoType(attrs[table.range_key_attr])
    return hash_key, range_key


class _Snapshot:
    """What a transaction may change: addressed items, or whole tables where that won't do."""

    def __init__(self, backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        self._tables: dict[str, _TableSnapshot] = {}
        self._copies: dict[str, Table] = {}  # moto's whole-table fallback
        for entry in transact_items:
            for op_type, op in entry.items():
                name = op.get("TableName") if isinstance(op, dict) else None
                if not name or name not in backend.tables or name in self._copies:
                    continue  # moto copies only tables it finds by name; so do we
                table = backend.tables[name]
                try:
                    if table.stream_shard is not None:
                        raise ValueError("a table with a stream records every write")
                    key = _key_of(table, op_type, op)
                except Exception:  # noqa: BLE001 - moto rejects such an operation itself
                    self._tables.pop(name, None)
                    self._copies[name] = copy.deepcopy(table)
                    continue
                self._tables.setdefault(name, _TableSnapshot(table)).record(*key)
        self._backend = backend

    def restore(self) -> None:
        for snapshot in self._tables.values():
            snapshot.restore()
        for name, table in self._copies.items():
            self._backend.tables[name] = table


def stop_table_copies() -> None:
    """Make the backend's ``transact_write_items`` roll back from a snapshot of its items."""
    original: Callable[..., None] = getattr(
        DynamoDBBackend.transact_write_items, "__wrapped__", DynamoDBBackend.transact_write_items
    )
    source = inspect.getsource(original)
    if "original_table_state[table_name] = copy.deepcopy(" not in source:
        raise RuntimeError(
            "moto's transact_write_items changed: review offline/moto_transactions.py"
        )

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        snapshot = _Snapshot(self, transact_items)
        _state.snapshotting = True
        try:
            original(self, transact_items)
        except BaseException:
            snapshot.restore()
            raise
        finally:
            _state.snapshotting = False

    transact_write_items.__wrapped__ = original  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    setattr(ddb_models, "copy", _COPY)  # noqa: B010 - moto's module-level name


# moto's models module sees this in place of ``copy``: deepcopy skips tables during a
# transaction (the snapshot above replaces that copy), everything else is the real module.
_COPY = types.SimpleNamespace(**{**vars(copy), "deepcopy": _deepcopy})
