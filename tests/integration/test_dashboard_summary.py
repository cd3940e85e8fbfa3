"""The operator summary over the real tables and queue (moto server): the oldest unfinished
request from the sparse ``pending`` index, usage records added up, failures with their details."""

from __future__ import annotations

import time
import uuid

from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.requests import PENDING_INDEX, PENDING_SHARDS
from chalicelib.stores.usage import Usage


def pending_ids(services: Services) -> set[str]:
    ids: set[str] = set()
    for shard in range(PENDING_SHARDS):
        pages = services.dynamodb_client.get_paginator("query").paginate(
            TableName=services.requests.table_name,
            IndexName=PENDING_INDEX,
            KeyConditionExpression="pending_shard = :s",
            ExpressionAttributeValues={":s": {"S": str(shard)}},
        )
        ids |= {i["request_id"]["S"] for page in pages for i in page["Items"]}
    return ids


def test_unfinished_requests_are_in_the_pending_index_until_they_finish(
    services: Services,
) -> None:
    store = services.requests
    old, new = f"req_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"
    store.create({"request_id": old, "owner": "u"})
    store.create({"request_id": new, "owner": "u"})
    store.claim(old)  # dispatched is still unfinished: its message is still in the queue
    assert {old, new} <= pending_ids(services)
    oldest = store.oldest_pending()
    record = store.get(old)
    assert oldest is not None and record is not None
    assert oldest[1] <= float(record["created_at"])  # older leftovers of other tests may exist
    store.complete(old, {"usage": {}})
    store.fail(new, {"status_code": 500})
    assert not {old, new} & pending_ids(services)
    done = store.get(old)
    assert done is not None and "pending_shard" not in done


def test_summary_counts_usage_and_lists_a_failure_with_its_request_details(
    own_stage: str,
) -> None:
    # A stage of its own: the summary lists the top ten users of the last ten minutes, and on
    # the shared stage ten other tests' users may hold more tokens than this one.
    registry = REPO_ROOT / "infra" / "deployments" / "local.json"
    services = Services(Settings(stage=own_stage, registry_path=str(registry)))
    owner = f"dash-{uuid.uuid4().hex[:6]}"
    failed_id = f"req_{uuid.uuid4().hex}"
    services.requests.create({"request_id": failed_id, "owner": owner, "model": "m"})
    error = {"message": "x", "type": "server_error", "param": None, "code": "engine_error"}
    services.requests.fail(failed_id, {"status_code": 500, "error": error, "endpoint": "ep-1"})
    now = time.time()
    common = {"owner": owner, "model": "m", "mode": "interactive", "function": "completions"}
    records = [
        Usage(
            **common,
            request_id=f"req_{i}_{owner}",
            status="completed",
            finished_at=now - i,
            prompt_tokens=7,
            completion_tokens=5,
        )
        for i in range(3)
    ] + [
        Usage(
            **common,
            request_id=failed_id,
            status="failed",
            finished_at=now - 1,
            status_code=500,
            errors=1,
        )
    ]
    assert services.usage.put_many(records) == []
    summary = services.dashboard.summary(600)
    mine = next(u for u in summary["traffic"]["top_users"] if u["user"] == owner)
    assert mine == {"user": owner, "tokens": 36, "requests": 4}
    failure = next(f for f in summary["traffic"]["recent_failures"] if f["request_id"] == failed_id)
    assert failure["status_code"] == 500 and failure["error_code"] == "engine_error"
    assert failure["endpoint"] == "ep-1" and failure["user"] == owner
    assert summary["traffic"]["failed"] >= 1 and summary["traffic"]["error_rate"] > 0
    queue = summary["queue"]
    assert isinstance(queue["depth"], int) and isinstance(queue["in_flight_messages"], int)
    assert {e["name"] for e in summary["endpoints"]} == {
        e.name for e in services.registry.endpoints
    }
