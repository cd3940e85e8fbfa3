"""The API's view of the endpoints table: one Scan per cache period, however many requests ask
at once (each request asks: its model may be starting)."""

from __future__ import annotations

import threading
import time

from chalicelib.fleet import Fleet
from chalicelib.registry import Registry
from chalicelib.router import CircuitPolicy
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from tests.aws_calls import CallCounter

READERS = 16


def test_concurrent_requests_share_one_refresh_of_a_stale_view(
    services: Services, aws_calls: CallCounter
) -> None:
    registry = Registry.load(REPO_ROOT / "infra" / "deployments" / "local.json")
    fleet = Fleet(registry, services.endpoint_store, CircuitPolicy(), cache_s=0.2)
    fleet.statuses()
    time.sleep(0.3)  # the view is stale now
    aws_calls.reset()
    barrier = threading.Barrier(READERS)

    def read() -> None:
        barrier.wait()
        fleet.statuses()

    threads = [threading.Thread(target=read) for _ in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # One reader refreshed; the others answered from the view it replaced.
    assert aws_calls.by_operation.get("dynamodb.Scan", 0) <= 2, aws_calls.by_operation
