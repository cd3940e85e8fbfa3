"""``python -m chalicelib.poller.main``: run one poller until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from types import FrameType

from chalicelib import metrics
from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.logs import get_logger
from chalicelib.poller.accounting import Accounting, handled_errors_gauge
from chalicelib.poller.board import StatusBoard
from chalicelib.poller.worker import Poller, PollerStopped
from chalicelib.services import Services


def build(services: Services) -> Poller:
    services.resolve_secrets()  # a secret that cannot be read stops the start here
    s = services.settings
    logger = get_logger("first-poller")
    policy = services.circuit_policy
    recorder = services.metrics("first-poller")
    accounting = Accounting(recorder, logger, services.usage_writer(recorder))
    return Poller(
        settings=s,
        registry=services.registry,
        queue=services.interactive_queue,
        requests=services.requests,
        blobs=services.blobs,
        replies=services.reply_sender,
        executors=ExecutorPool(
            default_factory(
                s.local_endpoint_url,
                s.local_endpoint_token_value,
                submit_limit_bytes=s.compute_submit_limit_bytes,
            )
        ),
        logger=logger,
        endpoints=services.endpoint_store,
        board=StatusBoard(services.registry, services.endpoint_store, logger, policy=policy),
        policy=policy,
        limits=services.limit_store,
        streams=services.stream_notifier(),
        accounting=accounting,
    )


def start_accounting(poller: Poller, services: Services) -> Accounting:
    """Flush metrics every ``metrics_flush_interval_s``, sampling the poller's gauges first."""
    accounting = poller.accounting
    assert accounting is not None  # build() gives every poller one
    queue = services.interactive_queue

    def gauges(m: metrics.MetricsRecorder) -> None:
        metrics.poller_gauges(
            m, inflight=poller.inflight, waiting=poller.waiting_for_slots, queue_depth=queue.depth()
        )

    accounting.start(
        services.settings.metrics_flush_interval_s,
        gauges,
        handled_errors_gauge(poller.counts, accounting.counts),
    )
    return accounting


def main() -> None:
    services = Services()
    poller = build(services)
    accounting = start_accounting(poller, services)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Finish what is in flight; a message not yet claimed simply reappears for a peer.
        poller.stopping.set()
        if poller.receiving:
            # Idle in a 20 s long-poll: cut it short rather than make shutdown wait for it.
            raise PollerStopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    poller.run()
    # Usage records still queued are written, and the last metrics flushed, before exit.
    accounting.close()


if __name__ == "__main__":
    main()
