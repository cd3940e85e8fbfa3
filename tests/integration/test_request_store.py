"""Request status only moves forward, by conditional writes, whatever the delivery order."""

import time
import uuid
from typing import Any

import pytest

from chalicelib.services import Services
from chalicelib.stores.requests import RequestConflictError
from tests.aws_calls import CallCounter


def new_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def test_claim_then_complete_once(services: Services) -> None:
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "u", "payload": "{}"})
    first = store.claim(rid)
    assert first["status"] == "dispatched" and first["attempt"] == 1 and first["payload"] == "{}"
    # A redelivered message (its poller died) re-claims: attempt 2, same request.
    assert store.claim(rid)["attempt"] == 2
    store.complete(rid, {"usage": {"total_tokens": 3}, "engine_time_ms": 1.5})
    done = store.get(rid)
    assert done is not None and done["status"] == "completed"
    assert done["usage"] == {"total_tokens": 3} and done["engine_time_ms"] == 1.5
    with pytest.raises(RequestConflictError) as info:
        store.complete(rid, {})
    assert info.value.current is not None and info.value.current["status"] == "completed"
    with pytest.raises(RequestConflictError):
        store.claim(rid)
    with pytest.raises(RequestConflictError):
        store.fail(rid, {"status_code": 500})


def test_create_never_overwrites_and_unknown_ids_conflict_without_state(services: Services) -> None:
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "u"})
    with pytest.raises(Exception, match="ConditionalCheckFailed"):
        store.create({"request_id": rid, "owner": "other"})
    with pytest.raises(RequestConflictError) as info:
        store.claim(new_id())
    assert info.value.current is None


def test_expired_records_read_as_missing(services: Services) -> None:
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "u"})
    services.dynamodb.Table(services.settings.requests_table_name).update_item(
        Key={"request_id": rid},
        UpdateExpression="SET expires_at = :p",
        ExpressionAttributeValues={":p": 1},
    )
    assert store.get(rid) is None


def test_someone_elses_request_reads_exactly_like_a_missing_one(services: Services) -> None:
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "alice", "payload": "x" * 20_000})
    assert store.get_owned(rid, "alice") is not None
    # The bytes of this client's own responses (the moto server's global counter would also
    # catch the tail of other tests' long polls that end meanwhile).
    seen: list[tuple[str, int]] = []

    def record(http_response: Any, model: Any, **_: Any) -> None:
        seen.append((model.name, len(http_response.content)))

    events = services.dynamodb_client.meta.events
    events.register("after-call.dynamodb", record)

    def wire(request_id: str) -> list[tuple[str, int]]:
        seen.clear()
        assert store.get_owned(request_id, "mallory") is None
        return list(seen)

    # Same calls, same bytes back: nothing of alice's record leaves DynamoDB for mallory, so
    # the answer's size and timing cannot tell an existing id from a made-up one.
    try:
        foreign, missing = wire(rid), wire(new_id())
    finally:
        events.unregister("after-call.dynamodb", record)
    assert foreign == missing and len(foreign) == 1


def test_a_claim_writes_the_record_its_message_carries_with_one_call_either_way(
    services: Services, aws_calls: CallCounter
) -> None:
    store, fresh, old = services.requests, new_id(), new_id()
    carried = store.new({"request_id": fresh, "owner": "u", "payload": "{}"})
    aws_calls.reset()
    first = store.claim(fresh, slot="ep-1", record=carried)  # no record yet: put, claimed
    assert aws_calls.by_operation == {"dynamodb.PutItem": 1}
    assert first["status"] == "dispatched" and first["attempt"] == 1 and first["slot"] == "ep-1"
    assert store.get(fresh) == {**first, "created_at": carried["created_at"]}
    # Past the API's first read-back the API may have written it (queued): updated, not put.
    waited = {**store.new({"request_id": old, "owner": "u"}), "created_at": time.time() - 60}
    assert store.put_new(waited) is None  # what the API does then
    aws_calls.reset()
    claimed = store.claim(old, slot="ep-2", record=waited)
    assert aws_calls.by_operation == {"dynamodb.UpdateItem": 1}
    assert claimed["attempt"] == 1 and claimed["slot"] == "ep-2"
    assert claimed["created_at"] == waited["created_at"]


def test_a_cancelled_request_keeps_its_usage_and_nothing_moves_it_again(
    services: Services,
) -> None:
    # A stream stopped by its client's disconnect was stored as completed: now cancelled, a
    # terminal status like completed and failed.
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "u"})
    store.claim(rid)
    store.cancel(rid, {"usage": {"prompt_tokens": 3, "completion_tokens": 17}})
    record = store.get(rid)
    assert record is not None and record["status"] == "cancelled"
    assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 17}
    assert "pending_shard" not in record  # out of the pending index, as any finished request
    for move in (store.claim, lambda r: store.complete(r, {}), lambda r: store.fail(r, {})):
        with pytest.raises(RequestConflictError) as info:
            move(rid)
        assert info.value.current is not None and info.value.current["status"] == "cancelled"


def test_the_relay_s_status_read_is_the_status_alone_and_none_once_expired(
    services: Services,
) -> None:
    store, rid = services.requests, new_id()
    store.create({"request_id": rid, "owner": "u", "payload": "x" * 20_000})
    store.claim(rid)
    assert store.status(rid) == "dispatched"
    store.complete(rid, {})
    assert store.status(rid) == "completed"
    assert store.status(new_id()) is None
    services.dynamodb.Table(services.settings.requests_table_name).update_item(
        Key={"request_id": rid},
        UpdateExpression="SET expires_at = :p",
        ExpressionAttributeValues={":p": 1},
    )
    assert store.status(rid) is None
