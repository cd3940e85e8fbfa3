"""Endpoint capacity leased per poller (chalicelib/poller/capacity.py) against the moto server:
no write per request, every slot counted once, a dead poller's slots back, fair share kept."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import boto3

from chalicelib.logs import get_logger
from chalicelib.poller.capacity import Capacity
from chalicelib.registry import Endpoint
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.endpoints import EndpointStore
from tests.aws_calls import CallCounter
from tests.integration.pollers import forget_endpoints, poller_services, pollers
from tests.integration.test_poller import ScriptedExecutor, response, submit

REQUESTS = 20


def endpoint(name: str, capacity: int) -> Endpoint:
    return Endpoint(
        name=name, endpoint_id=name, executor="local", max_inflight=capacity, functions={}
    )


def holder(
    store: EndpointStore,
    name: str,
    *,
    linger_s: float = 60.0,
    clock: Callable[[], float] | None = None,
) -> Capacity:
    """A poller's capacity, its upkeep run by hand (``tick``), reading the table afresh."""
    kwargs = {"clock": clock} if clock else {}
    return Capacity(
        store,
        name,
        get_logger("test-capacity"),
        lease_s=10.0,
        linger_s=linger_s,
        statuses=store.statuses,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_busy_poller_claims_with_one_put_and_finishes_with_one_update_and_no_slot_writes(
    stage: str, aws_session: boto3.Session, aws_calls: CallCounter
) -> None:
    services = poller_services(
        stage, REPO_ROOT / "infra" / "deployments" / "local.json", session=aws_session
    )
    forget_endpoints(services)
    with pollers(services) as start:
        start(
            lambda e: ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
        )
        services.gateway.wait(submit(services), 20)  # the first request leases a slot
        aws_calls.reset()
        for _ in range(REQUESTS):
            services.gateway.wait(submit(services), 20)
        requests, endpoints = services.requests.table_name, services.endpoint_store.table_name
        claims = aws_calls.on_table("dynamodb.PutItem", requests)
        completes = aws_calls.on_table("dynamodb.UpdateItem", requests)
        slot_writes = aws_calls.on_table("dynamodb.UpdateItem", endpoints)
        calls = aws_calls.by_operation
    # The API wrote no record (the message carried it); each claim put it, each finish updated
    # it; the slot was handed on in memory (heartbeats and a renewal at most meanwhile).
    assert claims == REQUESTS and completes == REQUESTS, calls
    assert calls.get("dynamodb.TransactWriteItems", 0) == 0
    assert slot_writes < REQUESTS / 4, calls


def test_an_unused_slot_goes_back_after_the_linger(services: Services) -> None:
    store, ep = services.endpoint_store, endpoint(f"ep-{uuid.uuid4().hex[:6]}", 4)
    capacity = holder(store, "poller-a", linger_s=0.0)
    assert capacity.take(ep, None)
    assert capacity.take(ep, store.statuses().get(ep.name))  # a second lease: 2 held
    assert store.statuses()[ep.name].inflight == 2
    capacity.give(ep.name)
    capacity.tick()  # one slot stayed idle since: it goes back
    capacity.tick()
    assert store.statuses()[ep.name].inflight == 1 and capacity.held(ep.name) == (1, 1)
    capacity.give(ep.name)
    capacity.tick()
    capacity.tick()
    status = store.statuses()[ep.name]
    assert status.inflight == 0 and status.leases == {}


def test_concurrent_leases_never_pass_capacity_and_a_forced_take_goes_past_it(
    services: Services,
) -> None:
    store, ep = services.endpoint_store, endpoint(f"ep-{uuid.uuid4().hex[:6]}", 3)
    a, b = holder(store, "poller-a"), holder(store, "poller-b")
    taken = [a.take(ep, store.statuses().get(ep.name), wanted=2) for _ in range(2)]
    assert taken == [True, True] and a.held(ep.name) == (2, 2)
    assert b.take(ep, store.statuses().get(ep.name), wanted=5)  # one left: one granted
    assert not b.take(ep, store.statuses().get(ep.name))
    assert store.statuses()[ep.name].inflight == 3
    # A request re-claimed from a dead poller goes back to its task: counted, past capacity.
    assert b.take(ep, store.statuses().get(ep.name), force=True)
    assert store.statuses()[ep.name].inflight == 4


def test_a_dead_pollers_lease_is_reclaimed_exactly_once(own_stage: str) -> None:
    # A stage of its own: a tick reclaims every expired lease of the table, other tests' too.
    store = Services(Settings(stage=own_stage)).endpoint_store
    ep = endpoint(f"ep-{uuid.uuid4().hex[:6]}", 4)
    dead = holder(store, "poller-dead")
    assert dead.take(ep, None, wanted=3)
    store.want(ep.name, "poller-gone", now=time.time() - 120)  # another gone poller's want
    assert store.statuses()[ep.name].inflight == 3
    # The dead poller never renews: two peers, a lease's length later, reclaim it, one of them.
    later = holder(store, "poller-b", clock=lambda: time.time() + dead.lease_s * 2)
    other = holder(store, "poller-c", clock=lambda: time.time() + dead.lease_s * 2)
    later.tick()
    other.tick()
    reclaimed = later.counts["slot_leases_reclaimed"] + other.counts["slot_leases_reclaimed"]
    status = store.statuses()[ep.name]
    assert reclaimed == 1 and status.inflight == 0 and status.leases == {}
    assert status.wants == {}  # a want nobody repeated for a minute is dropped


def test_a_lease_lost_while_its_poller_lived_is_counted_again(services: Services) -> None:
    store, ep = services.endpoint_store, endpoint(f"ep-{uuid.uuid4().hex[:6]}", 4)
    now = [1e9]
    paused = holder(store, "poller-paused", clock=lambda: now[0])
    assert paused.take(ep, None)  # one request running
    now[0] += paused.lease_s * 2  # paused past its lease...
    peer = holder(store, "poller-peer", clock=lambda: now[0])
    peer.tick()  # ...which a peer reclaims
    assert store.statuses()[ep.name].inflight == 0
    paused.tick()  # its renewal finds the lease gone: the running request is counted again
    status = store.statuses()[ep.name]
    assert paused.counts["slot_leases_lost"] == 1
    assert status.inflight == 1 and status.leases["poller-paused"].slots == 1


def test_a_poller_holding_every_slot_gives_peers_an_even_share(services: Services) -> None:
    store, ep = services.endpoint_store, endpoint(f"ep-{uuid.uuid4().hex[:6]}", 4)
    busy, starved = holder(store, "poller-busy"), holder(store, "poller-starved")
    assert busy.take(ep, None, wanted=4) and all(
        busy.take(ep, store.statuses().get(ep.name)) for _ in range(3)
    )
    assert not starved.take(ep, store.statuses().get(ep.name))  # full: it says it wants
    assert "poller-starved" in store.statuses()[ep.name].wants
    for _ in range(2):
        busy.give(ep.name)  # a request done: its slot goes back, not to the next request
        busy.tick()
    assert busy.held(ep.name) == (2, 2)
    assert not busy.take(ep, store.statuses().get(ep.name))  # its share is 2 while peers want
    assert starved.take(ep, store.statuses().get(ep.name), wanted=2)
    assert starved.held(ep.name) == (2, 1)
    assert store.statuses()[ep.name].inflight == 4
