"""Completion notices from the poller to the API process waiting on a request.

Each API process (a warm Lambda container, or the local API server) owns one SQS reply queue,
created on first use. The poller sends ``{"request_id", "status", ...}`` there when a request
finishes; one listener thread long-polls the queue and wakes the waiting caller. Compared with
polling DynamoDB this costs one receive per wake-up (not one read per poll interval) and wakes in
milliseconds. The queue's visibility timeout (12 h) outlives its retention (60 s), so a received
notice is never seen twice; received notices are still deleted, in batches (one call per ten, or
every 5 s), because a queue full of in-flight messages slows every receive (AWS caps in-flight
messages per queue; moto scans them all on each receive).

A notice can still be lost (the process was frozen or restarted mid-poll), so waiters fall back
to reading the record every ``fallback_s``: the record, not the notice, is the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.stores.deleter import BatchDeleter
from chalicelib.stores.sends import GroupSender, SendFailedError

REPLY_QUEUE_ATTRIBUTES = {"MessageRetentionPeriod": "60", "VisibilityTimeout": "43200"}


def process_queue_name(prefix: str) -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40]
    return f"{prefix}-{host}-{os.getpid()}"[:80]


class ReplySender:
    """The poller's side: one notice per finished request (batched with concurrent ones)."""

    def __init__(self, client: Any) -> None:
        self._sender = GroupSender(client)

    def send(self, queue_url: str, notice: dict[str, Any] | str) -> bool:
        """Send a notice (a dict, or its JSON text); False when the waiter's queue is gone."""
        body = notice if isinstance(notice, str) else json.dumps(notice)
        try:
            self._sender.send(queue_url, body)
        except SendFailedError:
            # The waiting process is gone (queue deleted): the record already holds the truth.
            return False
        return True


class _Slot:
    __slots__ = ("event", "notice")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.notice: dict[str, Any] | None = None


class ReplyListener:
    """The API's side: ``expect`` before sending the request, then ``wait``."""

    def __init__(self, client: Any, queue_name: str, *, wait_s: int = 20) -> None:
        self._sqs = client
        self._queue_name = queue_name
        self._wait_s = wait_s
        self._url: str | None = None
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """The queue URL (created, and the listener started, on first use)."""
        with self._lock:
            if self._url is None:
                out = self._sqs.create_queue(
                    QueueName=self._queue_name, Attributes=REPLY_QUEUE_ATTRIBUTES
                )
                self._url = out["QueueUrl"]
                self._deleter = BatchDeleter(self._sqs, self._url, max_delay_s=5.0)
                self._thread = threading.Thread(
                    target=self._listen, name="reply-listener", daemon=True
                )
                self._thread.start()
            return self._url

    def expect(self, request_id: str) -> None:
        with self._lock:
            self._slots[request_id] = _Slot()

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The notice for ``request_id``, or None when ``timeout_s`` passes first."""
        with self._lock:
            slot = self._slots.get(request_id)
        if slot is None:
            raise KeyError(f"expect({request_id!r}) was not called")
        if slot.event.wait(timeout_s):
            self.forget(request_id)
            return slot.notice
        return None

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._slots.pop(request_id, None)

    def close(self, *, delete_queue: bool = False) -> None:
        self._closed.set()
        if self._url is not None:
            self._deleter.close()
        if delete_queue and self._url is not None:
            with contextlib.suppress(ClientError):
                self._sqs.delete_queue(QueueUrl=self._url)

    def _listen(self) -> None:
        assert self._url is not None
        while not self._closed.is_set():
            try:
                out = self._sqs.receive_message(
                    QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=self._wait_s
                )
            except Exception:  # noqa: BLE001 - keep listening; waiters fall back to reads
                if self._closed.wait(1.0):
                    return
                continue
            for message in out.get("Messages", []):
                self._deleter.add(message["ReceiptHandle"])
                try:
                    notice = json.loads(message["Body"])
                except ValueError:
                    continue
                with self._lock:
                    slot = self._slots.get(str(notice.get("request_id")))
                if slot is not None:
                    slot.notice = notice
                    slot.event.set()
