"""What a consumer tells about the work it finished: metrics and usage records (``Accounting``:
the poller's requests; ``chalicelib.batch.accounting`` extends it for batch shards).

Called after the record is written and the reply (notice, final stream frame) sent, so none of
it is on the request's path: metrics are buffered in memory, the usage record is queued for the
background writer (``UsageWriter``). Nothing here may fail the request it describes: an error is
logged and counted (``HandledErrors`` kind ``accounting_errors``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import metrics
from chalicelib.metrics import MetricsRecorder
from chalicelib.stores.usage import Usage, UsageWriter


def usage_of(record: Mapping[str, Any], status: str, fields: dict[str, Any], now: float) -> Usage:
    """The usage record of a request the poller finished (pure: plain values in and out)."""
    usage = fields.get("usage") or {}
    created = _float(record.get("created_at"))
    dispatched = _float(record.get("dispatched_at"))
    stats = fields.get("stream_stats") or {}
    first_token = _float(stats.get("first_token_at"))
    error = fields.get("error") or {}
    # Cancelled (a stream its client left) is no failure: its tokens ran and count as used.
    failed = status == "failed"
    return Usage(
        owner=str(record.get("owner") or ""),
        request_id=str(record["request_id"]),
        model=str(record.get("model") or ""),
        mode="stream" if record.get("stream") else "interactive",
        # The route it came by (a Responses or Messages call runs as chat_completions).
        function=str(record.get("route") or record.get("function") or ""),
        status=status,
        finished_at=now,
        endpoint=fields.get("endpoint"),
        status_code=int(fields.get("status_code") or (500 if failed else 200)),
        error_code=str(error["code"]) if failed and error.get("code") else None,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        requests=1,
        errors=1 if failed else 0,
        cancelled=1 if status == "cancelled" else 0,
        created_at=created,
        queue_ms=_ms(created, dispatched),
        engine_ms=_float(fields.get("engine_time_ms")) if not failed else None,
        duration_ms=_ms(created, now),
        # Across two clocks (the HPC node's first token, the API's record): NTP keeps them close.
        ttft_ms=_ms(created, first_token),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None or end < start:
        return None
    return round((end - start) * 1000, 1)


class Accounting:
    def __init__(
        self,
        recorder: MetricsRecorder,
        logger: Logger,
        usage: UsageWriter | None = None,
    ) -> None:
        self.metrics = recorder
        self.usage = usage
        self._log = logger
        self.counts: Counter[str] = Counter()

    def finished(self, record: Mapping[str, Any], status: str, fields: dict[str, Any]) -> None:
        try:
            u = usage_of(record, status, fields, time.time())
            metrics.request_finished(
                self.metrics,
                model=u.model,
                endpoint=u.endpoint,
                mode=u.mode,
                status=status,
                status_code=u.status_code,
                code=u.error_code,
                queue_ms=u.queue_ms,
                latency_ms=u.duration_ms,
                engine_ms=u.engine_ms,
                ttft_ms=u.ttft_ms,
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
            )
            if self.usage is not None:
                self.usage.add(u)
        except Exception:  # noqa: BLE001 - the request is answered; its accounting is not
            self.counts["accounting_errors"] += 1
            self._log.exception(
                "request accounting failed", extra={"request_id": record.get("request_id")}
            )

    def start(self, interval_s: float, *gauges: Callable[[MetricsRecorder], None]) -> None:
        for gauge in gauges:
            self.metrics.gauge(gauge)
        self.metrics.start(interval_s)

    def close(self) -> None:
        if self.usage is not None:
            self.usage.close()
        self.metrics.close()


def handled_errors_gauge(
    *counters: Counter[str],
) -> Callable[[MetricsRecorder], None]:
    """A gauge that records how much each of ``counters`` grew since the last flush."""
    seen: Counter[str] = Counter()

    def sample(m: MetricsRecorder) -> None:
        now: Counter[str] = Counter()
        for counter in counters:
            now.update(dict(counter))
        metrics.handled_errors(m, {k: v - seen[k] for k, v in now.items()})
        seen.clear()
        seen.update(now)

    return sample
