"""Deletes SQS messages in batches: one ``DeleteMessageBatch`` for up to 10 receipts.

Deleting each message as it is done costs one call per message; gathering receipts for up to
``max_delay_s`` (or until 10 are waiting) costs one call per batch (``batcher``). A receipt
still waiting when the process dies is harmless where this is used: a finished request's message
that reappears loses its claim (the record is terminal) and is deleted then; a reply notice
expires on its own.

A failed delete is therefore not retried, but it is not silent either: a call that fails (say,
``AccessDenied`` from a policy without ``sqs:DeleteMessage``) and each entry the response lists
under ``Failed`` are logged and counted in ``failures`` (messages not deleted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from chalicelib.logs import get_logger
from chalicelib.stores.batcher import BackgroundBatcher

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef

BATCH = 10


class BatchDeleter(BackgroundBatcher[str]):
    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        *,
        max_delay_s: float = 1.0,
        logger: Logger | None = None,
    ) -> None:
        self._sqs = client
        self._url = queue_url
        log = logger or get_logger("first-sqs-deleter")
        super().__init__(size=BATCH, max_delay_s=max_delay_s, logger=log, name="sqs-deleter")

    def _write(self, batch: list[str]) -> int:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)
        ]
        try:
            out = self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
        except Exception:  # noqa: BLE001 - undeleted messages are safe to see again
            self._log.exception(
                "sqs delete failed", extra={"queue_url": self._url, "messages": len(batch)}
            )
            return len(batch)
        failed = out.get("Failed") or []
        if failed:
            self._log.error(
                "sqs delete failed for some messages",
                extra={
                    "queue_url": self._url,
                    "messages": len(failed),
                    "codes": sorted({str(f.get("Code")) for f in failed}),
                    "sender_fault": any(f.get("SenderFault") for f in failed),
                },
            )
        return len(failed)
