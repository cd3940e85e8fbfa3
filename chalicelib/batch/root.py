"""The batch worker's composition root: the worker and what it uses, on the shared building
blocks of ``chalicelib.root.Root``, and nothing of the API's request path."""

from __future__ import annotations

from chalicelib import metrics
from chalicelib.batch.accounting import BatchAccounting
from chalicelib.batch.worker import BatchWorker
from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.consumer.accounting import handled_errors_gauge
from chalicelib.logs import get_logger
from chalicelib.root import Root


def build(root: Root) -> BatchWorker:
    root.resolve_secrets()  # a secret that cannot be read stops the start here
    s = root.settings
    logger = get_logger("first-batch")
    recorder = root.metrics("first-batch")
    return BatchWorker(
        settings=s,
        registry=root.registry,
        queue=root.batch_queue,
        batches=root.batch_store,
        files=root.file_store,
        data=root.objects,
        drop=root.drop_objects,
        keys=root.keys,
        executors=ExecutorPool(default_factory(s.local_endpoint_url, s.local_endpoint_token_value)),
        logger=logger,
        endpoints=root.endpoint_store,
        policy=root.circuit_policy,
        accounting=BatchAccounting(recorder, logger, root.usage_writer(recorder)),
    )


def start_accounting(worker: BatchWorker, root: Root) -> BatchAccounting:
    """Flush metrics every ``metrics_flush_interval_s``, sampling the worker's gauges first."""
    accounting = worker.accounting
    assert accounting is not None  # build() gives every worker one
    accounting.start(
        root.settings.metrics_flush_interval_s,
        lambda m: metrics.batch_gauges(
            m, shards_inflight=worker.shards_running, batches=worker.batches_running
        ),
        handled_errors_gauge(worker.counts, accounting.counts),
    )
    return accounting
