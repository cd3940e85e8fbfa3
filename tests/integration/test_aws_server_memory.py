"""The embedded AWS endpoint holds what its tables, queues and buckets hold, not every object it
ever made: a long ``make run`` or soak stays bounded (offline/moto_memory.py)."""

from __future__ import annotations

import gc
import json
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models.table import Table
from moto.s3.models import FakeKey
from moto.sqs.models import Message

from chalicelib.services import Services
from chalicelib.stores.blobs import dumps
from chalicelib.stores.queue import RequestQueue
from tests.integration.conftest import Moto

ROUNDS = 20


def live(kind: type, match: Callable[[Any], bool]) -> int:
    """Live objects of ``kind`` that ``match`` accepts (the server runs in this process)."""
    gc.collect()
    # type(), not isinstance(): isinstance falls back to ``__class__``, which some live objects
    # (torch's deprecated ``reduce_op``) answer with a FutureWarning.
    return sum(1 for o in gc.get_objects() if type(o) is kind and match(o))


def test_transactions_leave_no_copy_of_their_tables_behind(services: Services) -> None:
    requests, table = services.requests, services.requests.table_name
    slot = services.endpoint_store.slot(f"mem-{uuid.uuid4().hex[:8]}", 1)
    ids = [uuid.uuid4().hex for _ in range(ROUNDS + 1)]
    for request_id in ids:
        requests.create({"request_id": request_id, "owner": "o", "model": "m"})
    waiting = ids.pop()
    requests.claim(waiting)
    for request_id in ids:
        requests.claim(request_id)
        assert requests.take_slot(request_id, slot)
        # The endpoint is full: a refused transaction, rolled back (offline/moto_transactions.py).
        assert not requests.take_slot(waiting, slot)
        requests.complete(request_id, {"result": "ok"}, slot=slot)
    # 60 transactions, 20 of them rolled back: one table remains, the one the backend serves
    # (moto's own rollback deep-copied the table each time and swapped a copy in).
    assert live(Table, lambda t: t.name == table) == 1
    assert all(requests.get(i)["status"] == "completed" for i in ids)  # type: ignore[index]


def test_deleted_messages_and_overwritten_objects_are_freed(
    services: Services, moto_server: Moto
) -> None:
    marker = uuid.uuid4().hex
    queue = RequestQueue(
        services.sqs, services.sqs.create_queue(QueueName=f"mem-{marker}")["QueueUrl"]
    )
    key = f"requests/{marker}/result.json"
    for n in range(ROUNDS):
        queue.send({"request_id": marker, "n": n})
        services.blobs.put_text(key, dumps({"n": n}))
    received = 0
    while received < ROUNDS:
        for message in queue.receive(10, 1, 30):
            queue.client.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
            received += 1
    assert services.blobs.get_json(key) == {"n": ROUNDS - 1}
    assert live(Message, lambda m: marker in m.body) == 0
    assert live(FakeKey, lambda k: k.name == key) == 1
    with urllib.request.urlopen(f"{moto_server.url}/_first/memory") as r:  # noqa: S310
        report = json.loads(r.read())
    assert report["moto_tracked_instances"] == 0
    assert report["rss_bytes"] > 0
