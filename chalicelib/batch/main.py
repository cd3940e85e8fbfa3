"""``python -m chalicelib.batch.main``: run one batch worker until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from types import FrameType

from chalicelib.batch.worker import BatchWorker, WorkerStopped
from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.logs import get_logger
from chalicelib.services import Services


def build(services: Services) -> BatchWorker:
    s = services.settings
    return BatchWorker(
        settings=s,
        registry=services.registry,
        queue=services.batch_queue,
        batches=services.batch_store,
        files=services.file_store,
        data=services.objects,
        drop=services.drop_objects,
        executors=ExecutorPool(default_factory(s.local_endpoint_url, s.local_endpoint_token_value)),
        logger=get_logger("first-batch"),
        endpoints=services.endpoint_store,
        policy=services.circuit_policy,
    )


def main() -> None:
    worker = build(Services())

    def stop(signum: int, frame: FrameType | None) -> None:
        # Batches in flight stop at the next shard boundary only when the process ends; their
        # messages reappear and a worker resumes them from their records.
        worker.stopping.set()
        if worker.receiving:
            raise WorkerStopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()


if __name__ == "__main__":
    main()
