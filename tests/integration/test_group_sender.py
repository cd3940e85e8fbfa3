"""Concurrent sends to one queue share batch calls, and every message arrives exactly once."""

from __future__ import annotations

import threading
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from chalicelib.stores.sends import GroupSender, SendFailedError
from tests.aws_calls import CallCounter
from tests.integration.conftest import Moto

SENDERS = 40


def test_concurrent_sends_share_calls_and_all_arrive_once(
    aws_session: boto3.Session, aws_calls: CallCounter
) -> None:
    sqs = aws_session.client("sqs", config=Config(max_pool_connections=SENDERS))
    url = sqs.create_queue(QueueName=f"group-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sender = GroupSender(sqs)
    barrier = threading.Barrier(SENDERS)

    def send(i: int) -> None:
        barrier.wait()
        sender.send(url, f"m{i}")

    aws_calls.reset()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    calls = aws_calls.by_operation
    sends = calls.get("sqs.SendMessage", 0) + calls.get("sqs.SendMessageBatch", 0)
    assert sends < SENDERS / 2, calls  # shared: most calls carried several messages

    bodies: list[str] = []
    while True:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not out.get("Messages"):
            break
        bodies += [m["Body"] for m in out["Messages"]]
    assert sorted(bodies) == sorted(f"m{i}" for i in range(SENDERS))


def test_a_send_to_a_missing_queue_fails_its_sender(moto_server: Moto) -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"gone-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(SendFailedError):
        GroupSender(sqs).send(url, "hello")


def test_a_lingering_send_shares_a_call_with_sends_that_come_just_after(
    aws_session: boto3.Session, aws_calls: CallCounter
) -> None:
    """Sends that never overlap (one every few milliseconds, as a poller finishing requests
    one slot at a time makes them) share calls when the sender lingers, and go alone when not."""
    sqs = aws_session.client("sqs", config=Config(max_pool_connections=SENDERS))
    url = sqs.create_queue(QueueName=f"linger-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sender = GroupSender(sqs)

    def one_by_one(linger_s: float) -> int:
        aws_calls.reset()
        threads = []
        for i in range(8):
            t = threading.Thread(
                target=sender.send, args=(url, f"m{i}"), kwargs={"linger_s": linger_s}
            )
            threads.append(t)
            t.start()
            if linger_s:
                time.sleep(0.005)  # the next send comes a little later
            else:
                t.join(30)  # the next send comes once this one is done
        for t in threads:
            t.join(30)
        calls = aws_calls.by_operation
        return calls.get("sqs.SendMessage", 0) + calls.get("sqs.SendMessageBatch", 0)

    sender.send(url, "first")  # the queue was sent to just now: lingers apply
    assert one_by_one(0.0) == 8
    assert one_by_one(0.5) < 4
