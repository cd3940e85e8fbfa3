"""``python -m chalicelib.poller.main``: run one poller until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from types import FrameType

from chalicelib.compute.executors import ExecutorPool, default_factory
from chalicelib.logs import get_logger
from chalicelib.poller.board import StatusBoard
from chalicelib.poller.worker import Poller, PollerStopped
from chalicelib.services import Services


def build(services: Services) -> Poller:
    s = services.settings
    logger = get_logger("first-poller")
    policy = services.circuit_policy
    return Poller(
        settings=s,
        registry=services.registry,
        queue=services.interactive_queue,
        requests=services.requests,
        blobs=services.blobs,
        replies=services.reply_sender,
        executors=ExecutorPool(default_factory(s.local_endpoint_url, s.local_endpoint_token_value)),
        logger=logger,
        endpoints=services.endpoint_store,
        board=StatusBoard(services.registry, services.endpoint_store, logger),
        policy=policy,
        limits=services.limit_store,
        streams=services.stream_notifier(),
    )


def main() -> None:
    poller = build(Services())

    def stop(signum: int, frame: FrameType | None) -> None:
        # Finish what is in flight; a message not yet claimed simply reappears for a peer.
        poller.stopping.set()
        if poller.receiving:
            # Idle in a 20 s long-poll: cut it short rather than make shutdown wait for it.
            raise PollerStopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    poller.run()


if __name__ == "__main__":
    main()
