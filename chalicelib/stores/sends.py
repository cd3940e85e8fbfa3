"""SQS sends with group commit: concurrent senders to one queue share ``SendMessageBatch`` calls.

A sender whose queue has no call in flight sends at once (alone, when the system is idle: no
added latency). Senders that arrive while a call is in flight queue up, and the next call takes
up to ten of them. Under load this turns N ``SendMessage`` calls into about N/10 (AWS bills a
batch of ten as one request), and on the embedded moto server it is the difference between
keeping up with hundreds of concurrent clients and falling behind.

Senders only share a call when they overlap it, and a system that hands work on one request at
a time (a poller whose endpoint slots are full starts the next request as one finishes) makes
its sends one at a time too: nothing overlaps, nothing is shared. A sender that knows more sends
to the queue are coming (the poller, while requests wait for its slots) passes ``linger_s``: the
call then waits that long, or until ten are waiting, for company; only where the queue was sent
to within the last ``RECENT_S`` (a queue that gets one message now and then is not kept
waiting for a second).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

BATCH = 10
# A linger applies only to a queue sent to this recently.
RECENT_S = 1.0


class SendFailedError(StoreError):
    """SQS refused this message (the batch's ``Failed`` entry, or the whole call)."""


class _Lane:
    __slots__ = ("busy", "full", "last_at", "pending")

    def __init__(self) -> None:
        self.pending: list[tuple[str, Future[None]]] = []
        self.busy = False
        # Set when a lingering call has a whole batch waiting.
        self.full = threading.Event()
        self.last_at = float("-inf")


class GroupSender:
    def __init__(self, client: SQSClient) -> None:
        self._sqs = client
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    def send(self, queue_url: str, body: str, *, linger_s: float = 0.0) -> None:
        """Send one message; returns once SQS accepted it, raises ``SendFailedError`` if not.
        ``linger_s``: more sends to this queue are expected; wait up to that long for them."""
        done: Future[None] = Future()
        now = time.monotonic()
        with self._lock:
            lane = self._lanes.setdefault(queue_url, _Lane())
            lead = not lane.busy
            if lead:
                lane.busy = True
                lane.full.clear()
            linger = lead and linger_s > 0 and now - lane.last_at < RECENT_S
            lane.last_at = now
            lane.pending.append((body, done))
            if len(lane.pending) >= BATCH:
                lane.full.set()
        if lead:
            if linger:
                lane.full.wait(linger_s)
            self._drain(queue_url, lane)
        done.result()

    def _drain(self, queue_url: str, lane: _Lane) -> None:
        while True:
            with self._lock:
                batch, lane.pending = lane.pending[:BATCH], lane.pending[BATCH:]
                if not batch:
                    lane.busy = False
                    return
            self._send_batch(queue_url, batch)

    def _send_batch(self, queue_url: str, batch: list[tuple[str, Future[None]]]) -> None:
        try:
            if len(batch) == 1:
                self._sqs.send_message(QueueUrl=queue_url, MessageBody=batch[0][0])
                failed: dict[str, str] = {}
            else:
                out = self._sqs.send_message_batch(
                    QueueUrl=queue_url,
                    Entries=[
                        {"Id": str(i), "MessageBody": body} for i, (body, _) in enumerate(batch)
                    ],
                )
                failed = {f["Id"]: f.get("Code", "failed") for f in out.get("Failed", [])}
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            error = SendFailedError(f"SQS refused the send to {queue_url}: {code}")
            error.__cause__ = exc
            for _, done in batch:
                done.set_exception(error)
            return
        except Exception as exc:  # noqa: BLE001 - handed to every sender of the batch
            for _, done in batch:
                done.set_exception(exc)
            return
        for i, (_, done) in enumerate(batch):
            if str(i) in failed:
                done.set_exception(SendFailedError(f"SQS refused the message: {failed[str(i)]}"))
            else:
                done.set_result(None)
