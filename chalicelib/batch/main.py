"""``python -m chalicelib.batch.main``: run one batch worker until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from types import FrameType

from chalicelib import metrics
from chalicelib.batch.accounting import BatchAccounting
from chalicelib.batch.worker import BatchWorker, WorkerStopped
from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.logs import get_logger
from chalicelib.poller.accounting import handled_errors_gauge
from chalicelib.services import Services


def build(services: Services) -> BatchWorker:
    services.resolve_secrets()  # a secret that cannot be read stops the start here
    s = services.settings
    logger = get_logger("first-batch")
    recorder = services.metrics("first-batch")
    return BatchWorker(
        settings=s,
        registry=services.registry,
        queue=services.batch_queue,
        batches=services.batch_store,
        files=services.file_store,
        data=services.objects,
        drop=services.drop_objects,
        keys=services.keys,
        executors=ExecutorPool(default_factory(s.local_endpoint_url, s.local_endpoint_token_value)),
        logger=logger,
        endpoints=services.endpoint_store,
        policy=services.circuit_policy,
        accounting=BatchAccounting(recorder, logger, services.usage_writer(recorder)),
    )


def main() -> None:
    services = Services()
    worker = build(services)
    accounting = worker.accounting
    assert accounting is not None  # build() gives every worker one
    accounting.start(
        services.settings.metrics_flush_interval_s,
        lambda m: metrics.batch_gauges(
            m, shards_inflight=worker.shards_running, batches=worker.batches_running
        ),
        handled_errors_gauge(worker.counts, accounting.counts),
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        # Batches in flight stop at the next shard boundary only when the process ends; their
        # messages reappear and a worker resumes them from their records.
        worker.stopping.set()
        if worker.receiving:
            raise WorkerStopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
    accounting.close()


if __name__ == "__main__":
    main()
