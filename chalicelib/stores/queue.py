"""An SQS queue of request ids (the interactive queue; the batch queue later)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from chalicelib.stores.sends import GroupSender

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType


class RequestQueue:
    def __init__(self, client: SQSClient, url: str, sender: GroupSender | None = None) -> None:
        self.client = client
        self.url = url
        # Concurrent requests of one process share SendMessageBatch calls.
        self._sender = sender or GroupSender(client)

    def send(self, body: dict[str, Any] | str) -> None:
        """Send a message (a dict, or its JSON text)."""
        self._sender.send(self.url, body if isinstance(body, str) else json.dumps(body))

    def receive(self, max_messages: int, wait_s: int, visibility_s: int) -> list[dict[str, Any]]:
        out = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return cast("list[dict[str, Any]]", out.get("Messages", []))

    def extend(self, receipt: str, visibility_s: int) -> None:
        self.client.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
        )

    def depth(self) -> int:
        """Messages waiting (visible) in the queue: approximate, as SQS reports it."""
        out = self.client.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(out["Attributes"]["ApproximateNumberOfMessages"])

    def counts(self) -> dict[str, int]:
        """Approximate message counts as SQS reports them: ``visible`` (waiting to be received),
        ``in_flight`` (received, not yet deleted), ``delayed``."""
        names: dict[str, QueueAttributeNameType] = {
            "visible": "ApproximateNumberOfMessages",
            "in_flight": "ApproximateNumberOfMessagesNotVisible",
            "delayed": "ApproximateNumberOfMessagesDelayed",
        }
        out = self.client.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=list(names.values())
        )
        attributes = out["Attributes"]
        return {key: int(attributes.get(name, "0")) for key, name in names.items()}

    def extend_many(self, receipts: list[str], visibility_s: int) -> list[str]:
        """Extend several messages' visibility, ten per call; the receipts that failed."""
        failed: list[str] = []
        for start in range(0, len(receipts), 10):
            batch = receipts[start : start + 10]
            out = self.client.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": visibility_s}
                    for i, r in enumerate(batch)
                ],
            )
            failed.extend(batch[int(f["Id"])] for f in out.get("Failed", []))
        return failed
