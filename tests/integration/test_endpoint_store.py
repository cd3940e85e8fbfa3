"""Endpoint capacity is shared by every poller: leased atomically, given back exactly once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.services import Services
from chalicelib.stores.endpoints import LeaseLostError
from chalicelib.stores.requests import RequestConflictError

CAPACITY = 3


def test_concurrent_takers_never_pass_capacity_and_each_slot_comes_back_once(
    services: Services,
) -> None:
    """Ten pollers lease one slot each at once: the shared count never passes the capacity;
    a lease given back, or reclaimed once expired, comes back exactly once."""
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    store = services.endpoint_store
    pollers = [f"poller-{i}" for i in range(10)]

    def take(holder: str) -> int:
        return store.lease(name, holder, held=0, more=1, capacity=CAPACITY, until=1e12)

    with ThreadPoolExecutor(10) as pool:
        taken = list(pool.map(take, pollers))
    assert sum(taken) == CAPACITY
    assert store.statuses()[name].inflight == CAPACITY

    holders = [p for p, n in zip(pollers, taken, strict=True) if n]
    store.give_back(name, holders[0], held=1, n=1)
    # A second give-back (a retried write, a confused holder) gives nothing back twice.
    with pytest.raises(LeaseLostError):
        store.give_back(name, holders[0], held=1, n=1)
    # holders[1] died: its lease expires, and of two pollers racing to reclaim it one does.
    store.renew(name, holders[1], held=1, until=100.0)
    expired = store.statuses()[name].leases[holders[1]]
    with ThreadPoolExecutor(2) as pool:
        reclaimed = list(pool.map(lambda _: store.reclaim(name, holders[1], expired), range(2)))
    assert sorted(reclaimed) == [False, True]
    with pytest.raises(LeaseLostError):  # the dead poller, had it lived, would have to know
        store.renew(name, holders[1], held=1, until=1e12)
    status = store.statuses()[name]
    assert status.inflight == CAPACITY - 2
    assert set(status.leases) == set(holders[2:])


def test_a_request_finishes_once_and_its_slot_leaves_the_record(services: Services) -> None:
    request_id = f"req_{uuid.uuid4().hex}"
    services.requests.create({"request_id": request_id, "owner": "u", "payload": "{}"})
    assert services.requests.claim(request_id, slot="ep-1")["slot"] == "ep-1"
    # A second claimer (its predecessor's message back) is sent to the endpoint already named.
    assert services.requests.claim(request_id, slot="ep-2")["slot"] == "ep-1"
    services.requests.complete(request_id, {"usage": {}}, slot="ep-1")
    # A second finish (a redelivered message, a slow predecessor) changes nothing.
    with pytest.raises(RequestConflictError):
        services.requests.complete(request_id, {"usage": {}}, slot="ep-1")
    record = services.requests.get(request_id)
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


def test_a_move_is_read_back_with_the_statuses_and_prunes_expired_homes(
    services: Services,
) -> None:
    """A conversation's move is one write on its new endpoint's item, read back by the scan
    every poller already makes; expired homes named in that write are removed."""
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    store = services.endpoint_store
    store.heartbeat(name, capacity=2, models={"m": "hot"}, now=100.0)
    store.move_home(name, "old", now=10.0)
    store.move_home(name, "key", expired=["old", "key"], now=200.0)
    assert store.statuses()[name].homes == {"key": 200.0}
