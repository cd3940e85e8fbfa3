"""Test helper: how many AWS calls one boto3 session's clients send, by operation.

The moto server's own counter (``/_first/calls``) counts every client in the process, so a
background thread another test left running (a reply listener's long poll, a poller's board
refresh) lands in a test's measurement. ``CallCounter`` counts only the calls sent by the
clients of the session it is registered on: build the code under test on that session.

It listens to botocore's ``before-send`` event, which fires once per HTTP request, so a retried
call counts once per attempt, as the server counts it. Operations are named as the server names
them, ``service.Operation`` (``"dynamodb.Query"``, ``"sqs.DeleteMessageBatch"``), the service
being botocore's hyphenated service id. Register it before the session makes its clients: a
client copies the session's event hooks when it is created.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import boto3


class CallCounter:
    def __init__(self, session: boto3.Session) -> None:
        self._calls: Counter[str] = Counter()
        self._tables: Counter[str] = Counter()
        self._lock = threading.Lock()
        session.events.register("before-send", self._count)

    def _count(self, event_name: str, request: Any = None, **_: Any) -> None:
        # "before-send.<service id>.<Operation>"
        _, service, operation = event_name.split(".", 2)
        table = _table_of(request) if service == "dynamodb" else None
        with self._lock:
            self._calls[f"{service}.{operation}"] += 1
            if table is not None:
                self._tables[f"{service}.{operation} {table}"] += 1

    def on_table(self, operation: str, table: str) -> int:
        """Calls of ``operation`` (``"dynamodb.UpdateItem"``) that named ``table``."""
        with self._lock:
            return self._tables[f"{operation} {table}"]

    @property
    def by_operation(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._tables.clear()


def _table_of(request: Any) -> str | None:
    """The ``TableName`` of a DynamoDB call (its JSON body), if it names one."""
    try:
        body = json.loads(request.body or b"{}")
    except (AttributeError, TypeError, ValueError):
        return None
    name = body.get("TableName") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None
