"""Concurrent sends to one queue share batch calls, and every message arrives exactly once."""

from __future__ import annotations

import threading
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
