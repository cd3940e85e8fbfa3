"""Deletes SQS messages in batches: one ``DeleteMessageBatch`` for up to 10 receipts.

Deleting each message as it is done costs one call per message; gathering receipts for up to
``max_delay_s`` (or until 10 are waiting) costs one call per batch. A receipt still waiting when
the process dies is harmless where this is used: a finished request's message that reappears
loses its claim (the record is terminal) and is deleted then; a reply notice expires on its own.
"""

from __future__ import annotations

import threading
from typing import Any

BATCH = 10


class BatchDeleter:
    def __init__(self, client: Any, queue_url: str, *, max_delay_s: float = 1.0) -> None:
        self._sqs = client
        self._url = queue_url
        self._delay = max_delay_s
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sqs-deleter", daemon=True)
        self._thread.start()

    def add(self, receipt: str) -> None:
        with self._lock:
            self._pending.append(receipt)
            full = len(self._pending) >= BATCH
        if full:
            self._wake.set()

    def flush(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            if not batch:
                return
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)]
            try:
                self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            except Exception:  # noqa: BLE001 - undeleted messages are safe to see again
                return

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self.flush()
