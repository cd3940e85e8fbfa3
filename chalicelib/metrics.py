"""CloudWatch metrics in Embedded Metric Format (EMF), serialised by aws-lambda-powertools.

Each process has one ``MetricsRecorder``. Observations are grouped by their dimensions, one
powertools ``EphemeralMetrics`` per dimension set (``Metrics`` shares one metric and dimension set
per process, which cannot hold per-model dimensions across threads), and each set is written as
one EMF JSON document on ``flush``: to stdout by default (Lambda and the poller's container ship
it to CloudWatch Logs, which extracts the metrics), to any ``sink`` given (tests capture them).

When to flush: the API after every request (a Lambda may freeze right after it answers); the
poller and the batch worker every ``Settings.metrics_flush_interval_s`` from a background thread
(``start``), which also samples their gauges first, and on ``close``.

Dimensions are names the gateway chose (route templates, registry model ids, endpoint names,
status and error codes), never a user id or anything a caller typed: EMF allows 30 dimensions a
set and CloudWatch bills every distinct combination. The catalogue, with units, is the functions
below and docs/operations.md "Metrics".
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from chalicelib.logs import get_logger

Sink = Callable[[str], None]
# powertools writes a set itself (print) when one metric reaches 100 values or a set reaches 100
# metrics; the recorder writes it through its sink one value before that.
MAX_VALUES = 100
MS = MetricUnit.Milliseconds
COUNT = MetricUnit.Count


def stdout_sink(line: str) -> None:
    # One write per document: print() writes the text and the newline separately, so two
    # threads could put two documents on one line, which CloudWatch cannot read as EMF.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class MetricsRecorder:
    def __init__(
        self,
        service: str,
        *,
        namespace: str = "FIRST",
        sink: Sink = stdout_sink,
        logger: Logger | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self._sink = sink
        self._log = logger or get_logger(service)
        # dimensions → metric name → (unit, values), until the next flush
        self._pending: dict[tuple[tuple[str, str], ...], dict[str, tuple[MetricUnit, list[float]]]]
        self._pending = {}
        self._lock = threading.Lock()
        self._gauges: list[Callable[[MetricsRecorder], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, unit: MetricUnit, value: float, **dimensions: str | None) -> None:
        """One observation; dimensions without a value are left out of its set. Only buffered
        here (a dict append on the caller's path); powertools builds the documents on flush."""
        dims = tuple(sorted((k, v) for k, v in dimensions.items() if v))
        with self._lock:
            metric = self._pending.setdefault(dims, {}).setdefault(name, (unit, []))
            metric[1].append(float(value))

    def flush(self) -> int:
        """Write every set holding observations; the number of EMF documents written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        written = 0
        for dims, named in pending.items():
            # powertools prints a set itself at 100 values of a metric or 100 metrics; the
            # recorder writes at most 99 of each per document, through its sink.
            names = list(named)
            for i in range(0, len(names), MAX_VALUES - 1):
                chunk = {n: named[n] for n in names[i : i + MAX_VALUES - 1]}
                longest = max(len(values) for _, values in chunk.values())
                for j in range(0, longest, MAX_VALUES - 1):
                    metrics = self._new(dims)
                    for n, (unit, values) in chunk.items():
                        for value in values[j : j + MAX_VALUES - 1]:
                            metrics.add_metric(name=n, unit=unit, value=value)
                    if metrics.metric_set:
                        self._write(metrics)
                        written += 1
        return written

    def _new(self, dims: tuple[tuple[str, str], ...]) -> EphemeralMetrics:
        metrics = EphemeralMetrics(namespace=self.namespace, service=self.service)
        for k, v in dims:
            # One dimension set per document (``add_dimensions`` would start a second one).
            metrics.add_dimension(name=k, value=v)
        return metrics

    def gauge(self, sample: Callable[[MetricsRecorder], None]) -> None:
        """``sample(recorder)`` records point-in-time values before each periodic flush."""
        self._gauges.append(sample)

    def start(self, interval_s: float) -> None:
        """Flush every ``interval_s`` from a background thread (long-running processes)."""
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        self.flush()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()
            self.flush()

    def _sample(self) -> None:
        for sample in self._gauges:
            try:
                sample(self)
            except Exception:  # noqa: BLE001 - a gauge that cannot be read is skipped this time
                self._log.exception("metrics gauge failed")

    def _write(self, metrics: EphemeralMetrics) -> None:
        try:
            document = metrics.serialize_metric_set()
            self._sink(json.dumps(document, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - metrics never fail the work they describe
            self._log.exception("metrics not written", extra={"metrics": list(metrics.metric_set)})


# ----- the catalogue: every metric the gateway writes (docs/operations.md "Metrics") -----------


def api_request(
    m: MetricsRecorder,
    *,
    route: str,
    status: int,
    latency_ms: float,
    model: str | None = None,
    code: str | None = None,
) -> None:
    """One call to an API route (``model``: a registry model id, or None)."""
    m.add("ApiRequests", COUNT, 1, route=route, status=str(status))
    m.add("ApiLatency", MS, latency_ms, route=route, model=model)
    if status >= 400:
        m.add("ApiErrors", COUNT, 1, route=route, status=str(status), code=code or "none")


def stream_admitted(m: MetricsRecorder, *, model: str | None) -> None:
    """A WebSocket request queued (``model``: a registry model id, or None)."""
    m.add("StreamRequests", COUNT, 1, model=model)


def stream_refused(m: MetricsRecorder, *, status: int, code: str | None) -> None:
    """A WebSocket message answered by an error frame instead of being queued."""
    m.add("StreamRefusals", COUNT, 1, status=str(status), code=code or "none")


def relay_push(m: MetricsRecorder, *, outcome: str, frames: int) -> None:
    """One push from an HPC function: ``posted``, ``duplicate`` (a retry already posted, or an
    empty push), ``gone`` (the client left: the function stops generating), ``finished`` (the
    request is terminal: 410), ``too_large`` (a frame over 128 KB: 413, nothing posted) or
    ``refused`` (a bad token or body, answered 4xx)."""
    m.add("RelayPushes", COUNT, 1, outcome=outcome)
    if frames:
        m.add("RelayFrames", COUNT, frames)


def request_finished(
    m: MetricsRecorder,
    *,
    model: str,
    endpoint: str | None,
    mode: str,
    status: str,
    status_code: int,
    code: str | None,
    queue_ms: float | None,
    latency_ms: float | None,
    engine_ms: float | None,
    ttft_ms: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """A request the poller made terminal (interactive or streamed), by the Globus Compute
    endpoint that ran it."""
    # The dimension keeps its published name, "deployment": dashboards and alarms select on it.
    where = {"model": model, "deployment": endpoint or "none"}
    m.add("RequestsFinished", COUNT, 1, **where, mode=mode, status=status)
    if queue_ms is not None:
        m.add("QueueWait", MS, queue_ms, model=model)
    if latency_ms is not None:
        m.add("RequestLatency", MS, latency_ms, **where)
    if engine_ms is not None and status == "completed":
        m.add("EngineTime", MS, engine_ms, **where)
    if ttft_ms is not None:
        m.add("TimeToFirstToken", MS, ttft_ms, **where)
    m.add("PromptTokens", COUNT, prompt_tokens, **where)
    m.add("CompletionTokens", COUNT, completion_tokens, **where)
    if status == "failed":  # cancelled (its client left) is counted by RequestsFinished
        m.add("RequestErrors", COUNT, 1, **where, status=str(status_code), code=code or "none")


def affinity_routed(m: MetricsRecorder, *, endpoint: str, hit: bool) -> None:
    """A request with an affinity key ran on its home (a hit) or elsewhere (a miss)."""
    m.add("AffinityRequests", COUNT, 1, deployment=endpoint, outcome="hit" if hit else "miss")


def affinity_moved(m: MetricsRecorder, *, endpoint: str) -> None:
    """A conversation moved to ``endpoint`` (its home refused, or failed over)."""
    m.add("AffinityMoves", COUNT, 1, deployment=endpoint)


def poller_gauges(
    m: MetricsRecorder, *, inflight: int, waiting: int, queue_depth: int | None
) -> None:
    m.add("PollerInFlight", COUNT, inflight)
    m.add("PollerWaitingForSlots", COUNT, waiting)
    if queue_depth is not None:
        m.add("QueueDepth", COUNT, queue_depth, queue="interactive")


def handled_errors(m: MetricsRecorder, counts: dict[str, int]) -> None:
    """Failures a process handled (retried, logged) since the last flush, by kind."""
    for kind, n in counts.items():
        if n:
            m.add("HandledErrors", COUNT, n, kind=kind)


def usage_write_failed(m: MetricsRecorder, records: int) -> None:
    m.add("UsageWriteErrors", COUNT, records)


def batch_shard(
    m: MetricsRecorder,
    *,
    model: str,
    endpoint: str | None,
    completed: int,
    failed: int,
    engine_ms: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """A batch shard counted on its batch (service ``first-batch``)."""
    # The published dimension name (as in ``request_finished``) for the endpoint that ran it.
    where = {"model": model, "deployment": endpoint or "none"}
    m.add("BatchLinesCompleted", COUNT, completed, **where)
    m.add("BatchLinesFailed", COUNT, failed, **where)
    if engine_ms is not None:
        m.add("BatchShardEngineTime", MS, engine_ms, **where)
    m.add("PromptTokens", COUNT, prompt_tokens, **where)
    m.add("CompletionTokens", COUNT, completion_tokens, **where)


def batch_finished(m: MetricsRecorder, *, status: str) -> None:
    m.add("BatchesFinished", COUNT, 1, status=status)


def batch_gauges(m: MetricsRecorder, *, shards_inflight: int, batches: int) -> None:
    m.add("BatchShardsInFlight", COUNT, shards_inflight)
    m.add("BatchesInProgress", COUNT, batches)


def documents(lines: list[str]) -> list[dict[str, Any]]:
    """EMF documents captured by a list sink, parsed (tests, tools)."""
    return [json.loads(line) for line in lines]
