"""What the batch worker tells about a shard it counted: metrics and one usage record a shard.

One usage record per shard rather than per line: a shard is one HPC task, counted once on the
batch (``BatchStore.record_shard``), and its result carries its lines' token sums; a record per
line would be up to 50,000 writes a batch for the same totals. The record's ``requests`` is the
shard's lines and ``errors`` its failed lines, so ``GET /v1/usage`` counts batch lines as
requests. Its ``request_id`` is ``<batch id>-shard-<n>``.
"""

from __future__ import annotations

import time
from typing import Any

from chalicelib import metrics
from chalicelib.consumer.accounting import Accounting
from chalicelib.protocol.batches import route_of
from chalicelib.stores.usage import Usage


def shard_usage(
    record: dict[str, Any],
    n: int,
    completed: int,
    failed: int,
    endpoint: str | None,
    result: dict[str, Any],
    now: float,
) -> Usage:
    lines = completed + failed
    engine_ms = result.get("engine_time_ms")
    return Usage(
        owner=str(record["owner"]),
        request_id=f"{record['batch_id']}-shard-{n}",
        model=str(record.get("model") or ""),
        mode="batch",
        # The route its lines came by: a Responses or Messages batch runs as chat.
        function=route_of(record.get("endpoint")),
        status="failed" if lines and not completed else "completed",
        finished_at=now,
        endpoint=endpoint,
        status_code=500 if lines and not completed else 200,
        error_code="shard_failed" if endpoint is None else None,
        prompt_tokens=int(result.get("prompt_tokens") or 0),
        completion_tokens=int(result.get("completion_tokens") or 0),
        requests=lines,
        errors=failed,
        engine_ms=None if engine_ms is None else float(engine_ms),
    )


class BatchAccounting(Accounting):
    def shard(
        self,
        record: dict[str, Any],
        n: int,
        completed: int,
        failed: int,
        endpoint: str | None,
        result: dict[str, Any] | None,
    ) -> None:
        """A shard counted on its batch: its metrics, its usage record, and a flush."""
        try:
            u = shard_usage(record, n, completed, failed, endpoint, result or {}, time.time())
            metrics.batch_shard(
                self.metrics,
                model=u.model,
                endpoint=endpoint,
                completed=completed,
                failed=failed,
                engine_ms=u.engine_ms,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
            )
            if self.usage is not None:
                self.usage.add(u)
            self.metrics.flush()
        except Exception:  # noqa: BLE001 - the shard is counted; its accounting is not
            self.counts["accounting_errors"] += 1
            self._log.exception("shard accounting failed", extra={"batch": record.get("batch_id")})

    def batch_finished(self, status: str) -> None:
        metrics.batch_finished(self.metrics, status=status)
        self.metrics.flush()
