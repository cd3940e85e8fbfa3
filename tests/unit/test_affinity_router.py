"""Conversation affinity in the pure router: the home first unless down, open or overloaded;
a moved key stays moved; an endpoint joining takes only its share of the keys."""

from chalicelib import router
from chalicelib.registry import Endpoint, ModelDeployment
from chalicelib.router import AffinityPolicy, CircuitPolicy, EndpointStatus

DEP = ModelDeployment("m", "o", ("chat_completions",), {"kind": "transformers"})
NOW = 10_000.0
CIRCUIT = CircuitPolicy(failures_to_open=3, cooldown_s=30.0, stale_s=30.0)
POLICY = AffinityPolicy(bound=1.25, ttl_s=3600.0)


def endpoint(name: str, capacity: int = 8) -> Endpoint:
    return Endpoint(name, name, "globus", capacity, {"chat_completions": "f"}, (DEP,))


def status(name: str, **kw: object) -> EndpointStatus:
    fields: dict[str, object] = {"last_seen": NOW - 1, "models": {"m": router.HOT}, **kw}
    return EndpointStatus(name, **fields)  # type: ignore[arg-type]


def choose(
    key: str, eps: list[Endpoint], statuses: dict[str, EndpointStatus]
) -> tuple[str, str, str | None]:
    """(chosen endpoint, hit|miss, home) as the poller computes them."""
    candidates = [(e, DEP) for e in eps]
    home = router.home_of(key, candidates, statuses, NOW, POLICY)
    ranked = router.rank(candidates, statuses, NOW, CIRCUIT)
    ordered, verdict = router.prefer_home(ranked, key, home, statuses, NOW, POLICY, CIRCUIT)
    return ordered[0][0].name, verdict, home


def two() -> tuple[list[Endpoint], dict[str, EndpointStatus]]:
    eps = [endpoint("a"), endpoint("b")]
    return eps, {"a": status("a"), "b": status("b")}


def test_a_key_goes_to_its_rendezvous_home_every_time() -> None:
    eps, statuses = two()
    for i in range(50):
        key = f"k{i}"
        chosen, verdict, home = choose(key, eps, statuses)
        assert (chosen, verdict) == (home, router.HIT)
        assert home == router.rendezvous(key, ["a", "b"])[0]  # equal capacities
        assert choose(key, list(reversed(eps)), statuses)[0] == chosen  # order-free


def test_keys_spread_over_the_endpoints() -> None:
    eps, statuses = two()
    homes = [choose(f"k{i}", eps, statuses)[0] for i in range(400)]
    assert 0.4 < homes.count("a") / len(homes) < 0.6


def test_a_recorded_move_is_the_home_until_it_expires() -> None:
    eps, statuses = two()
    key = next(f"k{i}" for i in range(100) if choose(f"k{i}", eps, statuses)[0] == "a")
    statuses["b"] = status("b", homes={key: NOW - 10})
    assert choose(key, eps, statuses) == ("b", router.HIT, "b")
    statuses["b"] = status("b", homes={key: NOW - POLICY.ttl_s - 1})
    assert choose(key, eps, statuses) == ("a", router.HIT, "a")


def test_the_newer_of_two_moves_wins() -> None:
    eps, _ = two()
    statuses = {"a": status("a", homes={"k": NOW - 5}), "b": status("b", homes={"k": NOW - 50})}
    assert choose("k", eps, statuses)[0] == "a"


def test_an_overloaded_home_is_left_for_the_next_choice() -> None:
    eps, statuses = two()
    key = next(f"k{i}" for i in range(100) if choose(f"k{i}", eps, statuses)[0] == "a")
    # a holds 6 of 7 in flight: its bound is ceil(1.25 × 8 × 1/2) = 5.
    statuses = {"a": status("a", inflight=6), "b": status("b", inflight=1)}
    assert choose(key, eps, statuses) == ("b", router.MISS, "a")
    # Within the bound (4 of 6: ceil(1.25 × 7 / 2) = 5) it stays home.
    statuses = {"a": status("a", inflight=4), "b": status("b", inflight=2)}
    assert choose(key, eps, statuses) == ("a", router.HIT, "a")


def test_a_home_down_or_with_its_circuit_open_is_left() -> None:
    eps, statuses = two()
    key = next(f"k{i}" for i in range(100) if choose(f"k{i}", eps, statuses)[0] == "a")
    offline = {**statuses, "a": status("a", last_seen=NOW - 60)}
    assert choose(key, eps, offline) == ("b", router.MISS, "a")
    tripped = {**statuses, "a": status("a", failures=3, opened_at=NOW - 1)}
    assert choose(key, eps, tripped) == ("b", router.MISS, "a")


def test_a_cold_home_is_left_while_another_is_hot() -> None:
    eps, statuses = two()
    key = next(f"k{i}" for i in range(100) if choose(f"k{i}", eps, statuses)[0] == "a")
    cold = {**statuses, "a": status("a", models={"m": router.COLD})}
    assert choose(key, eps, cold) == ("b", router.MISS, "a")


def test_a_refused_home_sends_its_keys_to_their_second_choices_not_one_endpoint() -> None:
    eps = [endpoint(n) for n in "abcd"]
    statuses = {n: status(n) for n in "abcd"}
    statuses["a"] = status("a", last_seen=NOW - 60)
    moved = [
        choose(f"k{i}", eps, statuses)[0]
        for i in range(400)
        if router.rendezvous(f"k{i}", list("abcd"))[0] == "a"
    ]
    assert set(moved) == {"b", "c", "d"}
    assert max(moved.count(n) for n in "bcd") < 0.5 * len(moved)


def test_an_endpoint_joining_takes_about_one_in_n_of_the_keys_and_moves_no_other() -> None:
    keys = [f"conversation-{i}" for i in range(2000)]
    before = {k: router.rendezvous(k, ["a", "b", "c"])[0] for k in keys}
    after = {k: router.rendezvous(k, ["a", "b", "c", "d"])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # only to the newcomer
    assert 0.2 < len(moved) / len(keys) < 0.3  # about 1/4


def test_without_candidates_there_is_no_home() -> None:
    assert router.home_of("k", [], {}, NOW, POLICY) is None
    assert router.prefer_home([], "k", None, {}, NOW) == ([], router.MISS)


def test_a_full_home_with_no_room_anywhere_keeps_the_usual_order() -> None:
    eps = [endpoint("a", 2), endpoint("b", 2)]
    statuses = {"a": status("a", inflight=2), "b": status("b", inflight=2)}
    ranked = router.rank([(e, DEP) for e in eps], statuses, NOW, CIRCUIT)
    ordered, verdict = router.prefer_home(ranked, "k", "a", statuses, NOW, POLICY, CIRCUIT)
    assert verdict == router.MISS
    assert [e.name for e, _ in ordered] == [e.name for e, _ in ranked]


def test_homes_follow_capacity() -> None:
    eps = [endpoint("a", 4), endpoint("b", 2)]
    statuses = {"a": status("a"), "b": status("b")}
    homes = [choose(f"k{i}", eps, statuses)[2] for i in range(600)]
    assert 0.58 < homes.count("a") / len(homes) < 0.75  # 4 of 6


def test_a_small_home_keeps_its_second_conversation_at_low_load() -> None:
    """local-b (2 slots of 6) running one request: the bound alone (ceil(1.25 × 2 / 3) = 1)
    would move the next; the one request of slack keeps it home. Full, it moves."""
    eps = [endpoint("a", 4), endpoint("b", 2)]
    idle = {"a": status("a"), "b": status("b")}
    key = next(f"k{i}" for i in range(200) if choose(f"k{i}", eps, idle)[0] == "b")
    assert choose(key, eps, {"a": status("a"), "b": status("b", inflight=1)})[:2] == ("b", "hit")
    assert choose(key, eps, {"a": status("a"), "b": status("b", inflight=2)})[:2] == ("a", "miss")
