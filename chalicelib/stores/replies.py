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

A queue outlives the container that made it, so each one carries a ``first:last-used`` tag (epoch
seconds): set when it is created, refreshed by the listener at most every ``touch_s`` while the
process runs (one TagQueue an hour, off the request path). ``chalicelib.stores.sweeper`` deletes
queues whose tag is older than a day. A listener whose queue was swept (a container frozen that
long) creates it again under the same name, hence the same URL the poller sends to.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.logs import get_logger
from chalicelib.stores.deleter import BatchDeleter
from chalicelib.stores.sends import GroupSender, SendFailedError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

REPLY_QUEUE_ATTRIBUTES: dict[QueueAttributeNameType, str] = {
    "MessageRetentionPeriod": "60",
    "VisibilityTimeout": "43200",
}
# Epoch seconds of the queue's last known use (creation, or a live listener's touch).
LAST_USED_TAG = "first:last-used"
# What SQS answers for a deleted queue (JSON protocol, query protocol).
QUEUE_MISSING_CODES = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
_log = get_logger("first-replies")


def queue_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in QUEUE_MISSING_CODES


def process_queue_name(prefix: str) -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:40]
    return f"{prefix}-{host}-{os.getpid()}"[:80]


class ReplySender:
    """The poller's side: one notice per finished request (batched with concurrent ones)."""

    def __init__(self, client: SQSClient) -> None:
        self._sender = GroupSender(client)

    def send(self, queue_url: str, notice: dict[str, Any] | str, *, linger_s: float = 0.0) -> bool:
        """Send a notice (a dict, or its JSON text); False when the waiter's queue is gone.
        ``linger_s``: more notices are coming (``GroupSender``): share a call with them."""
        body = notice if isinstance(notice, str) else json.dumps(notice)
        try:
            self._sender.send(queue_url, body, linger_s=linger_s)
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

    def __init__(
        self,
        client: SQSClient,
        queue_name: str,
        *,
        wait_s: int = 20,
        touch_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sqs = client
        self._queue_name = queue_name
        self._wait_s = wait_s
        self._touch_s = touch_s
        self._clock = clock
        self._touched_s = 0.0
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
                self._url = self._create()
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

    def _create(self) -> str:
        self._touched_s = self._clock()
        out = self._sqs.create_queue(
            QueueName=self._queue_name,
            Attributes=REPLY_QUEUE_ATTRIBUTES,
            tags={LAST_USED_TAG: str(int(self._touched_s))},
        )
        return str(out["QueueUrl"])

    def _touch_if_due(self) -> None:
        """Refresh the last-used tag (at most every ``touch_s``) so the sweeper spares us."""
        now = self._clock()
        if self._url is None or now - self._touched_s < self._touch_s:
            return  # (no URL: the listener runs only once the queue is made)
        self._touched_s = now
        try:
            self._sqs.tag_queue(QueueUrl=self._url, Tags={LAST_USED_TAG: str(int(now))})
        except ClientError as exc:
            # Not fatal: the next touch is due in touch_s, well inside the sweeper's idle time.
            _log.warning("reply queue touch failed", extra={"queue": self._url, "error": str(exc)})

    def _recreate(self) -> None:
        """Our queue was swept while this process slept: make it again (same name, same URL)."""
        try:
            self._create()
            _log.info("reply queue recreated", extra={"queue": self._url})
        except ClientError as exc:
            # AWS refuses the name for 60 s after a delete: keep trying, slowly.
            _log.warning("reply queue recreate failed", extra={"error": str(exc)})
            self._closed.wait(5.0)

    def _listen(self) -> None:
        assert self._url is not None
        while not self._closed.is_set():
            try:
                out = self._sqs.receive_message(
                    QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=self._wait_s
                )
            except ClientError as exc:
                if self._closed.is_set():
                    return  # closed while receiving: a swept queue is not made again
                if queue_missing(exc):
                    self._recreate()
                    continue
                _log.warning("reply queue receive failed", extra={"error": str(exc)})
                if self._closed.wait(1.0):
                    return
                continue
            except Exception:  # noqa: BLE001 - keep listening; waiters fall back to reads
                _log.exception("reply queue receive failed")
                if self._closed.wait(1.0):
                    return
                continue
            self._touch_if_due()
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
