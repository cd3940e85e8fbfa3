"""Routing over the shared endpoint status: warmth, capacity, load, priority; circuits; health."""

import pytest

from chalicelib import router
from chalicelib.errors import FirstError
from chalicelib.registry import Endpoint, ModelDeployment
from chalicelib.router import CircuitPolicy, EndpointStatus

DEP = ModelDeployment("m", "o", ("chat_completions",), {"kind": "transformers"})
NOW = 10_000.0
POLICY = CircuitPolicy(failures_to_open=3, cooldown_s=30.0, stale_s=30.0)


def endpoint(name: str, capacity: int, priority: int = 0) -> Endpoint:
    return Endpoint(
        name, name, "globus", capacity, {"chat_completions": "f"}, (DEP,), priority=priority
    )


def status(name: str, **kw: object) -> EndpointStatus:
    fields: dict[str, object] = {"last_seen": NOW - 1, "models": {"m": router.HOT}, **kw}
    return EndpointStatus(name, **fields)  # type: ignore[arg-type]


def names(ranked: list[tuple[Endpoint, ModelDeployment]]) -> list[str]:
    return [e.name for e, _ in ranked]


def test_least_loaded_relative_to_capacity_wins() -> None:
    a, b = endpoint("a", 4), endpoint("b", 16)
    statuses = {"a": status("a", inflight=1), "b": status("b", inflight=2)}
    assert names(router.rank([(a, DEP), (b, DEP)], statuses, NOW, POLICY)) == ["b", "a"]


def test_hot_beats_cold_and_spare_capacity_beats_full() -> None:
    a, b, c = endpoint("a", 4), endpoint("b", 4), endpoint("c", 4)
    statuses = {
        "a": status("a", models={"m": router.COLD}),
        "b": status("b", inflight=4),  # hot but full
        "c": status("c", inflight=3),  # hot, one slot left
    }
    assert names(router.rank([(a, DEP), (b, DEP), (c, DEP)], statuses, NOW, POLICY)) == [
        "c",
        "b",
        "a",
    ]


def test_priority_breaks_ties_in_load() -> None:
    a, b = endpoint("a", 4, priority=0), endpoint("b", 4, priority=5)
    statuses = {"a": status("a"), "b": status("b")}
    assert names(router.rank([(a, DEP), (b, DEP)], statuses, NOW, POLICY))[0] == "b"


def test_an_endpoint_not_heard_from_is_skipped() -> None:
    a, b = endpoint("a", 4), endpoint("b", 4)
    statuses = {"a": status("a", last_seen=NOW - 31), "b": status("b")}
    assert names(router.rank([(a, DEP), (b, DEP)], statuses, NOW, POLICY)) == ["b"]
    assert router.choose([(a, DEP)], statuses, NOW, POLICY) is None
    assert router.choose([(a, DEP)], {}, NOW, POLICY) is None  # never heard from


def test_circuit_opens_at_n_failures_half_opens_after_cooldown_for_one_probe() -> None:
    closed = status("a", failures=2)
    assert router.circuit(closed, NOW, POLICY) == router.CLOSED
    opened = status("a", failures=3, opened_at=NOW - 10)
    assert router.circuit(opened, NOW, POLICY) == router.OPEN
    cooled = status("a", failures=3, opened_at=NOW - 31)
    assert router.circuit(cooled, NOW, POLICY) == router.HALF_OPEN
    probing = status("a", failures=3, opened_at=NOW - 31, probe_at=NOW - 0.5)
    assert router.circuit(probing, NOW, POLICY) == router.OPEN  # its one probe is out
    a, b = endpoint("a", 4), endpoint("b", 4)
    ranked = router.rank([(a, DEP), (b, DEP)], {"a": opened, "b": status("b")}, NOW, POLICY)
    assert names(ranked) == ["b"]
    ranked = router.rank([(a, DEP)], {"a": cooled}, NOW, POLICY)
    assert names(ranked) == ["a"]  # half-open: offered, the store decides who probes


def test_model_status_is_its_warmest_deployment_and_unavailable_when_down() -> None:
    a = endpoint("a", 4)
    assert router.model_status(a, "m", status("a"), NOW, POLICY) == router.HOT
    assert router.model_status(a, "m", None, NOW, POLICY) == router.UNAVAILABLE
    opened = status("a", failures=3, opened_at=NOW)
    assert router.model_status(a, "m", opened, NOW, POLICY) == router.UNAVAILABLE
    assert router.model_status(a, "x", status("a"), NOW, POLICY) == router.COLD
    assert router.overall_status([router.COLD, router.HOT]) == router.HOT
    assert router.overall_status([]) == router.UNAVAILABLE


def test_no_candidate_is_the_routers_own_error_not_an_http_one() -> None:
    with pytest.raises(router.NoDeploymentError) as raised:
        router.rank([], {}, NOW)
    assert not isinstance(raised.value, FirstError)


WARMING_POLICY = CircuitPolicy(warm_timeout_s=600.0, start_estimate_s=60.0)


def test_a_cold_deployment_asked_to_warm_reads_starting_until_the_mark_times_out() -> None:
    a = endpoint("a", 4)
    cold = status("a", models={"m": router.COLD}, warming={"m": NOW - 10})
    assert router.model_status(a, "m", cold, NOW, WARMING_POLICY) == router.STARTING
    stale = status("a", models={"m": router.COLD}, warming={"m": NOW - 601})
    assert router.model_status(a, "m", stale, NOW, WARMING_POLICY) == router.COLD
    # The endpoint's own word wins once it has one: hot stays hot, whatever the mark says.
    hot = status("a", warming={"m": NOW - 10})
    assert router.model_status(a, "m", hot, NOW, WARMING_POLICY) == router.HOT


def test_starting_ranks_between_hot_and_cold() -> None:
    a, b, c = endpoint("a", 4), endpoint("b", 4), endpoint("c", 4)
    statuses = {
        "a": status("a", models={"m": router.COLD}),
        "b": status("b", models={"m": router.STARTING}),
        "c": status("c", inflight=3),
    }
    ranked = router.rank([(a, DEP), (b, DEP), (c, DEP)], statuses, NOW, WARMING_POLICY)
    assert names(ranked) == ["c", "b", "a"]


def test_the_wait_for_a_model_with_no_hot_deployment_is_its_soonest_start() -> None:
    a, b = endpoint("a", 4), endpoint("b", 4)
    said = status("a", models={"m": router.STARTING}, ready_at={"m": NOW + 7})
    unsaid = status("b", models={"m": router.STARTING})
    candidates = [(a, DEP), (b, DEP)]
    wait = router.start_wait_s(candidates, {"a": said, "b": unsaid}, NOW, WARMING_POLICY)
    assert wait == 7.0  # where the endpoint said; the other is expected in 60 s
    cold = status("b", models={"m": router.COLD})
    assert router.start_wait_s([(b, DEP)], {"b": cold}, NOW, WARMING_POLICY) == 60.0
    asked = status("b", models={"m": router.COLD}, warming={"m": NOW - 45})
    assert router.start_wait_s([(b, DEP)], {"b": asked}, NOW, WARMING_POLICY) == 15.0
    # A hot deployment anywhere: nothing to wait for. None usable: nothing to wait for either.
    assert router.start_wait_s(candidates, {"a": said, "b": status("b")}, NOW) is None
    assert router.start_wait_s(candidates, {}, NOW, WARMING_POLICY) is None
