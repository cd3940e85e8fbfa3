"""Endpoint capacity is shared by every poller: taken atomically, given back exactly once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.services import Services
from chalicelib.stores.requests import RequestConflictError

CAPACITY = 3


def dispatched(services: Services) -> str:
    request_id = f"req_{uuid.uuid4().hex}"
    services.requests.create({"request_id": request_id, "owner": "u", "payload": "{}"})
    services.requests.claim(request_id)
    return request_id


def test_concurrent_takers_never_pass_capacity_and_each_slot_comes_back_once(
    services: Services,
) -> None:
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    store = services.endpoint_store
    requests = [dispatched(services) for _ in range(10)]

    def take(request_id: str) -> bool:
        return services.requests.take_slot(request_id, store.slot(name, CAPACITY))

    with ThreadPoolExecutor(10) as pool:
        taken = list(pool.map(take, requests))
    assert sum(taken) == CAPACITY
    assert store.statuses()[name].inflight == CAPACITY

    holders = [r for r, ok in zip(requests, taken, strict=True) if ok]
    slot = store.slot(name, CAPACITY)
    services.requests.complete(holders[0], {"usage": {}}, slot=slot)
    # A second finish (a redelivered message, a slow predecessor) gives nothing back twice.
    with pytest.raises(RequestConflictError):
        services.requests.complete(holders[0], {"usage": {}}, slot=slot)
    services.requests.give_slot_back(holders[1], slot)
    with pytest.raises(RequestConflictError):
        services.requests.give_slot_back(holders[1], slot)
    assert store.statuses()[name].inflight == CAPACITY - 2
    record = services.requests.get(holders[0])
    assert record is not None and record["status"] == "completed" and "slot" not in record


def test_one_probe_per_cooldown_and_the_circuit_opens_at_n(services: Services) -> None:
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    store = services.endpoint_store
    assert [store.record_failure(name, 3, now=100.0) for _ in range(3)] == [1, 2, 3]
    status = store.statuses()[name]
    assert status.failures == 3 and status.opened_at == 100.0
    open_until = status.opened_at + 30.0
    with ThreadPoolExecutor(8) as pool:
        probes = list(pool.map(lambda _: store.take_probe(name, open_until, now=131.0), range(8)))
    assert sum(probes) == 1
    store.record_success(name)
    assert store.statuses()[name].failures == 0
