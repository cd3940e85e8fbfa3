"""The poller's composition root: the poller and what it uses, on the shared building blocks of
``chalicelib.root.Root``, and nothing of the API (``tests/unit/test_import_graph.py`` and
``tests/integration/test_process_roots.py`` hold it to that)."""

from __future__ import annotations

from chalicelib import metrics
from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.consumer.accounting import Accounting, handled_errors_gauge
from chalicelib.logs import get_logger
from chalicelib.poller.board import StatusBoard
from chalicelib.poller.worker import Poller
from chalicelib.root import Root
from chalicelib.streaming.notifier import StreamNotifier


def stream_notifier(root: Root) -> StreamNotifier | None:
    """The poller's streaming side, or None when streaming is not configured."""
    s = root.settings
    if not (s.stream_key and s.stream_relay_url and s.websocket_management_url):
        return None
    return StreamNotifier(s, root.connection_poster, get_logger("first-poller"))


def build(root: Root) -> Poller:
    root.resolve_secrets()  # a secret that cannot be read stops the start here
    s = root.settings
    logger = get_logger("first-poller")
    policy = root.circuit_policy
    recorder = root.metrics("first-poller")
    accounting = Accounting(recorder, logger, root.usage_writer(recorder))
    return Poller(
        settings=s,
        registry=root.registry,
        queue=root.interactive_queue,
        requests=root.requests,
        blobs=root.blobs,
        replies=root.reply_sender,
        executors=ExecutorPool(
            default_factory(
                s.local_endpoint_url,
                s.local_endpoint_token_value,
                submit_limit_bytes=s.compute_submit_limit_bytes,
            )
        ),
        logger=logger,
        endpoints=root.endpoint_store,
        board=StatusBoard(root.registry, root.endpoint_store, logger, policy=policy),
        policy=policy,
        limits=root.limit_store,
        streams=stream_notifier(root),
        accounting=accounting,
    )


def start_accounting(poller: Poller, root: Root) -> Accounting:
    """Flush metrics every ``metrics_flush_interval_s``, sampling the poller's gauges first."""
    accounting = poller.accounting
    assert accounting is not None  # build() gives every poller one
    queue = root.interactive_queue

    def gauges(m: metrics.MetricsRecorder) -> None:
        metrics.poller_gauges(
            m, inflight=poller.inflight, waiting=poller.waiting_for_slots, queue_depth=queue.depth()
        )

    accounting.start(
        root.settings.metrics_flush_interval_s,
        gauges,
        handled_errors_gauge(poller.counts, accounting.counts),
    )
    return accounting
