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
    client, counter = services.dynamodb_client, services.settings.endpoints_table_name
    name = f"mem-{uuid.uuid4().hex[:8]}"

    def transact(request_id: str, slot: str, add: int) -> bool:
        """The request's slot noted with one endpoint slot counted (at most one there)."""
        try:
            client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": table,
                            "Key": {"request_id": {"S": request_id}},
                            "UpdateExpression": "SET slot = :slot",
                            "ExpressionAttributeValues": {":slot": {"S": slot}},
                        }
                    },
                    {
                        "Update": {
                            "TableName": counter,
                            "Key": {"name": {"S": name}},
                            "UpdateExpression": "ADD inflight :n",
                            "ConditionExpression": "attribute_not_exists(inflight) OR inflight < :one",
                            "ExpressionAttributeValues": {
                                ":n": {"N": str(add)},
                                ":one": {"N": "1"},
                            },
                        }
                    },
                ]
            )
        except client.exceptions.TransactionCanceledException:
            return False
        return True

    ids = [uuid.uuid4().hex for _ in range(ROUNDS + 1)]
    for request_id in ids:
        requests.create({"request_id": request_id, "owner": "o", "model": "m"})
    waiting = ids.pop()
    requests.claim(waiting)
    for request_id in ids:
        requests.claim(request_id)
        assert transact(request_id, name, 1)
        # The endpoint is full: a refused transaction, rolled back (offline/moto_transactions.py).
        assert not transact(waiting, name, 1)
        requests.complete(request_id, {"result": "ok"})
        client.update_item(
            TableName=counter,
            Key={"name": {"S": name}},
            UpdateExpression="ADD inflight :n",
            ExpressionAttributeValues={":n": {"N": "-1"}},
        )
    # 40 transactions, 20 of them rolled back: one table remains, the one the backend serves
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
