"""The usage table on the moto server: records by owner and by day, summaries, the writer."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid

import pytest
from aws_lambda_powertools import Logger

from chalicelib.services import Services
from chalicelib.stores.usage import (
    DAY_SHARDS,
    Usage,
    UsageRangeError,
    UsageStore,
    UsageWriter,
)
from tests.aws_calls import CallCounter

DAY = 24 * 3600
# A fixed UTC midnight well inside the TTL (records expire ``usage_ttl_s`` after they finish).
T0 = (int(time.time()) // DAY - 3) * DAY


def usage(owner: str, at: float, **fields: object) -> Usage:
    base: dict[str, object] = {
        "owner": owner,
        "request_id": f"req_{uuid.uuid4().hex}",
        "model": "m1",
        "mode": "interactive",
        "function": "chat_completions",
        "status": "completed",
        "finished_at": at,
        "endpoint": "ep-a",
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    return Usage(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture
def store(services: Services) -> UsageStore:
    s = services.settings
    return UsageStore(services.dynamodb_client, s.usage_table_name, ttl_s=s.usage_ttl_s)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def test_a_users_range_is_one_query_and_sees_only_their_records(
    store: UsageStore, aws_calls: CallCounter
) -> None:
    alice, bob = user(), user()
    records = [
        usage(alice, T0 + 10),
        usage(alice, T0 + 20, model="m2", prompt_tokens=3, completion_tokens=0),
        usage(alice, T0 + DAY + 5, status="failed", status_code=500, errors=1, prompt_tokens=0),
        usage(alice, T0 + 2 * DAY + 1),  # outside the range below
        usage(bob, T0 + 15, prompt_tokens=1000),
    ]
    assert store.put_many(records) == []
    aws_calls.reset()
    summary = store.summary(T0, T0 + 2 * DAY, "model", owner=alice)
    assert aws_calls.by_operation == {"dynamodb.Query": 1}
    assert summary["totals"] == {
        "requests": 3,
        "prompt_tokens": 13,
        "completion_tokens": 10,
        "total_tokens": 23,
        "errors": 1,
        "cancelled": 0,
    }
    assert [(b["model"], b["requests"], b["total_tokens"]) for b in summary["data"]] == [
        ("m1", 2, 20),
        ("m2", 1, 3),
    ]
    by_day = store.summary(T0, T0 + 2 * DAY, "day", owner=alice)["data"]
    day0 = time.strftime("%Y-%m-%d", time.gmtime(T0))
    day1 = time.strftime("%Y-%m-%d", time.gmtime(T0 + DAY))
    assert [(b["day"], b["requests"], b["errors"]) for b in by_day] == [(day0, 2, 0), (day1, 1, 1)]


def test_a_cancelled_stream_is_counted_as_cancelled_with_its_tokens_not_as_an_error(
    store: UsageStore,
) -> None:
    erin = user()
    stopped = usage(erin, T0 + 10, status="cancelled", cancelled=1, mode="stream")
    assert store.put_many([usage(erin, T0 + 5), stopped]) == []
    totals = store.summary(T0, T0 + DAY, owner=erin)["totals"]
    assert (totals["requests"], totals["cancelled"], totals["errors"]) == (2, 1, 0)
    assert totals["total_tokens"] == 30


def test_the_range_ends_are_start_inclusive_end_exclusive(store: UsageStore) -> None:
    carol = user()
    store.put_many([usage(carol, T0), usage(carol, T0 + 99.999), usage(carol, T0 + 100)])
    assert store.summary(T0, T0 + 100, owner=carol)["totals"]["requests"] == 2


def test_everyone_by_user_reads_the_day_index_not_a_scan(
    store: UsageStore, aws_calls: CallCounter
) -> None:
    # A stage of its own would be cleaner; a unique day far back keeps this test's records apart.
    t = T0 - 20 * DAY
    a, b = user(), user()
    store.put_many([usage(a, t + 1), usage(a, t + 2), usage(b, t + 3, completion_tokens=50)])
    aws_calls.reset()
    summary = store.summary(t, t + DAY, "user")
    ops = aws_calls.by_operation
    assert ops == {"dynamodb.Query": DAY_SHARDS}
    assert {x["user"]: x["total_tokens"] for x in summary["data"]} == {a: 30, b: 60}
    assert summary["user"] is None


def test_a_range_that_is_reversed_or_too_wide_is_refused(store: UsageStore) -> None:
    with pytest.raises(UsageRangeError):
        store.summary(T0, T0)
    with pytest.raises(UsageRangeError):
        store.summary(T0, T0 + 32 * DAY)


def test_the_writer_batches_25_a_call_and_writes_the_rest_on_close(
    store: UsageStore, aws_calls: CallCounter
) -> None:
    dave = user()
    aws_calls.reset()
    writer = UsageWriter(store, max_delay_s=60)
    for i in range(30):
        writer.add(usage(dave, T0 + i))
    writer.close()
    assert aws_calls.by_operation == {"dynamodb.BatchWriteItem": 2}
    assert store.summary(T0, T0 + DAY, owner=dave)["totals"]["requests"] == 30
    assert writer.failures == 0


def test_a_failed_write_is_logged_and_counted_never_raised(services: Services) -> None:
    out = io.StringIO()
    logger = Logger(service=f"t{uuid.uuid4().hex[:6]}", logger_handler=logging.StreamHandler(out))
    lost: list[int] = []
    missing = UsageStore(services.dynamodb_client, "no-such-table")
    writer = UsageWriter(missing, max_delay_s=60, logger=logger, on_failure=lost.append)
    for i in range(3):
        writer.add(usage(user(), T0 + i))
    writer.close()
    assert writer.failures == 3
    assert lost == [3]
    (record,) = [json.loads(line) for line in out.getvalue().splitlines() if "usage" in line]
    assert record["level"] == "ERROR"
    assert record["records"] == 3
    assert "ResourceNotFoundException" in record["exception"]


def test_the_table_expires_records_and_has_the_day_index(
    services: Services, store: UsageStore
) -> None:
    ddb = services.dynamodb_client
    ttl = ddb.describe_time_to_live(TableName=store.table_name)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    table = ddb.describe_table(TableName=store.table_name)["Table"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by-day"]


def test_records_carry_no_text_and_expire(services: Services, store: UsageStore) -> None:
    record = usage(user(), T0)
    item = record.item(store.ttl_s)
    assert item["expires_at"] == int(T0) + services.settings.usage_ttl_s
    assert item["day_shard"].startswith(time.strftime("%Y-%m-%d#", time.gmtime(T0)))
    assert not {"prompt", "messages", "input", "choices", "content"} & set(item)
