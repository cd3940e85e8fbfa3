"""Deletes reply queues nobody has used for a day (``chalicelib.stores.replies``).

Every warm API process (a Lambda container) makes its own reply queue and never deletes it: a
container that goes away leaves an empty queue behind. This runs on a schedule (``app.py``'s
``sweep_reply_queues``, hourly; the offline stack's scheduler) and deletes each queue under the
reply prefix that is idle: its last use (the ``first:last-used`` tag its listener refreshes, else
its ``CreatedTimestamp`` for a queue made before the tag existed) is older than ``idle_s`` *and*
it holds no message (a notice lives 60 s, so a queue holding one was used within the minute).

A live process whose queue is swept anyway (frozen longer than ``idle_s``) makes it again on its
next receive; notices sent meanwhile are lost, and its waiters read the record instead.

Errors: a queue that vanishes between listing and deleting (another sweep, its owner) counts as
gone; any other failure on one queue is logged and counted in ``failed``, and the sweep goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from chalicelib.logs import get_logger
from chalicelib.stores.replies import LAST_USED_TAG, queue_missing

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

_log = get_logger("first-sweeper")
# Counted as "holding messages": visible, received (in flight) and delayed.
_MESSAGE_COUNTS: tuple[QueueAttributeNameType, ...] = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


def last_used_s(tags: dict[str, str], attributes: dict[str, str]) -> float:
    """The latest of the queue's last-used tag and its creation time (epoch seconds)."""
    created = float(attributes.get("CreatedTimestamp") or 0)
    try:
        tagged = float(tags.get(LAST_USED_TAG, "0"))
    except ValueError:
        tagged = 0.0  # a hand-edited tag: fall back to the creation time
    return max(created, tagged)


def is_idle(now_s: float, last_used: float, messages: int, idle_s: float) -> bool:
    return messages == 0 and now_s - last_used >= idle_s


@dataclass
class SweepReport:
    examined: int = 0
    deleted: list[str] = field(default_factory=list)
    failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"examined": self.examined, "deleted": list(self.deleted), "failed": self.failed}


class ReplyQueueSweeper:
    def __init__(
        self,
        client: SQSClient,
        prefix: str,
        *,
        idle_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The trailing dash keeps stage "prod" from matching "first-prod2-reply-…" or the like.
        self._sqs = client
        self._prefix = prefix if prefix.endswith("-") else f"{prefix}-"
        self._idle_s = idle_s
        self._clock = clock

    def queue_urls(self) -> list[str]:
        pages = self._sqs.get_paginator("list_queues").paginate(QueueNamePrefix=self._prefix)
        return [url for page in pages for url in page.get("QueueUrls", [])]

    def sweep(self) -> SweepReport:
        report = SweepReport()
        now = self._clock()
        for url in self.queue_urls():
            report.examined += 1
            try:
                if self._sweep_one(url, now):
                    report.deleted.append(url.rsplit("/", 1)[-1])
            except ClientError as exc:
                if queue_missing(exc):
                    continue  # gone already: nothing to sweep
                report.failed += 1
                _log.warning("reply queue sweep failed", extra={"queue": url, "error": str(exc)})
        _log.info("reply queues swept", extra=report.as_dict())
        return report

    def _sweep_one(self, url: str, now: float) -> bool:
        # Keyed by the stubs' attribute-name literals; read here as plain names.
        attributes = cast(
            "dict[str, str]",
            self._sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["CreatedTimestamp", *_MESSAGE_COUNTS]
            )["Attributes"],
        )
        messages = sum(int(attributes.get(name, "0")) for name in _MESSAGE_COUNTS)
        if messages:
            return False
        tags = self._sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        if not is_idle(now, last_used_s(tags, attributes), messages, self._idle_s):
            return False
        self._sqs.delete_queue(QueueUrl=url)
        return True
