"""Done messages are deleted in batches: fewer calls, none left on close, no failure silent."""

import io
import json
import logging
import uuid

from aws_lambda_powertools import Logger

from chalicelib.services import Services
from chalicelib.stores.deleter import BatchDeleter
from tests.aws_calls import CallCounter


def received(services: Services, name: str, n: int) -> tuple[str, list[str]]:
    sqs = services.sqs
    url = sqs.create_queue(QueueName=services.settings.resource(name))["QueueUrl"]
    for i in range(n):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    receipts: list[str] = []
    while len(receipts) < n:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
        receipts += [m["ReceiptHandle"] for m in out.get("Messages", [])]
    return url, receipts


def captured() -> tuple[Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    return Logger(service=f"t{uuid.uuid4().hex[:6]}", logger_handler=handler), out


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_receipts_are_deleted_ten_per_call_and_flushed_on_close(
    services: Services, aws_calls: CallCounter
) -> None:
    url, receipts = received(services, "deleter-test", 12)
    aws_calls.reset()
    deleter = BatchDeleter(services.sqs, url, max_delay_s=60)
    for r in receipts:
        deleter.add(r)
    deleter.close()
    assert aws_calls.by_operation == {"sqs.DeleteMessageBatch": 2}
    attrs = services.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert deleter.failures == 0


def test_entries_the_response_lists_as_failed_are_logged_and_counted(services: Services) -> None:
    url, receipts = received(services, "deleter-partial", 3)
    logger, out = captured()
    deleter = BatchDeleter(services.sqs, url, max_delay_s=60, logger=logger)
    for r in [*receipts, "not-a-receipt", "nor-this"]:
        deleter.add(r)
    deleter.close()
    assert deleter.failures == 2
    (record,) = [r for r in records(out) if r["level"] == "ERROR"]
    assert record["messages"] == 2
    assert record["codes"] == ["ReceiptHandleIsInvalid"]
    assert record["queue_url"] == url


def test_a_failed_call_is_logged_and_counted_not_swallowed(services: Services) -> None:
    url, receipts = received(services, "deleter-gone", 4)
    services.sqs.delete_queue(QueueUrl=url)
    logger, out = captured()
    deleter = BatchDeleter(services.sqs, url, max_delay_s=60, logger=logger)
    for r in receipts:
        deleter.add(r)
    deleter.close()
    assert deleter.failures == 4
    (record,) = [r for r in records(out) if r["level"] == "ERROR"]
    assert record["message"] == "sqs delete failed"
    assert record["messages"] == 4
    assert "QueueDoesNotExist" in str(record.get("exception"))


def test_every_batch_is_tried_on_close_even_after_one_fails(services: Services) -> None:
    url, receipts = received(services, "deleter-all", 25)
    logger, out = captured()
    deleter = BatchDeleter(services.sqs, url, max_delay_s=60, logger=logger)
    services.sqs.delete_queue(QueueUrl=url)
    for r in receipts:
        deleter.add(r)
    deleter.close()
    # Every message accounted for, in calls of at most ten (the background flush may have taken
    # a first batch while receipts were still being added).
    assert deleter.failures == 25
    logged = [int(str(r["messages"])) for r in records(out) if r["level"] == "ERROR"]
    assert sum(logged) == 25
    assert max(logged) <= 10


def test_a_full_batch_goes_out_alone_and_the_stragglers_wait_for_company(
    services: Services, aws_calls: CallCounter
) -> None:
    """What the background thread does when woken by a full batch: whole batches only (it sent
    the few that came in meanwhile as a second, small call)."""
    url, receipts = received(services, "deleter-full-only", 13)
    deleter = BatchDeleter(services.sqs, url, max_delay_s=60)
    deleter.close()  # the thread stopped: each flush below is the test's
    aws_calls.reset()
    for r in receipts:
        deleter.add(r)
    deleter.flush(full_only=True)
    assert aws_calls.by_operation == {"sqs.DeleteMessageBatch": 1}
    deleter.flush()  # the delay passed (or the process ends): the three go too
    assert aws_calls.by_operation == {"sqs.DeleteMessageBatch": 2}
    assert deleter.failures == 0
