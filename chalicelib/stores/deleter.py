"""Deletes SQS messages in batches: one ``DeleteMessageBatch`` for up to 10 receipts.

Deleting each message as it is done costs one call per message; gathering receipts for up to
``max_delay_s`` (or until 10 are waiting) costs one call per batch. A receipt still waiting when
the process dies is harmless where this is used: a finished request's message that reappears
loses its claim (the record is terminal) and is deleted then; a reply notice expires on its own.

A failed delete is therefore not retried, but it is not silent either: a call that fails (say,
``AccessDenied`` from a policy without ``sqs:DeleteMessage``) and each entry the response lists
under ``Failed`` are logged and counted in ``failures`` (messages not deleted).
"""

from __future__ import annotations

import threading
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.logs import get_logger

BATCH = 10


class BatchDeleter:
    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        max_delay_s: float = 1.0,
        logger: Logger | None = None,
    ) -> None:
        self._sqs = client
        self._url = queue_url
        self._delay = max_delay_s
        self._log = logger or get_logger("first-sqs-deleter")
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.failures = 0
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
                out = self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            except Exception:  # noqa: BLE001 - undeleted messages are safe to see again
                self._count(len(batch))
                self._log.exception(
                    "sqs delete failed",
                    extra={"queue_url": self._url, "messages": len(batch)},
                )
                # Each batch on its own: what ``close`` leaves behind is then deleted or counted.
                continue
            failed = out.get("Failed") or []
            if failed:
                self._count(len(failed))
                self._log.error(
                    "sqs delete failed for some messages",
                    extra={
                        "queue_url": self._url,
                        "messages": len(failed),
                        "codes": sorted({str(f.get("Code")) for f in failed}),
                        "sender_fault": any(f.get("SenderFault") for f in failed),
                    },
                )

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    def _count(self, n: int) -> None:
        with self._lock:
            self.failures += n

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self.flush()
