"""Where a task goes next (``chalicelib.placement``), over plain values: try, wait or fail."""

from chalicelib import placement
from chalicelib.placement import Fail, Try, Wait
from chalicelib.registry import Endpoint, ModelDeployment
from chalicelib.router import Candidate

DEP = ModelDeployment("m", "o", ("chat_completions",), {"kind": "transformers"})


def candidate(name: str) -> Candidate:
    return Endpoint(name, name, "globus", 4, {"chat_completions": "f"}, (DEP,)), DEP


A, B, C = candidate("a"), candidate("b"), candidate("c")


def plan(
    ranked: list[Candidate],
    *,
    failed_on: dict[str, str] | None = None,
    held: str | None = None,
    now_s: float = 100.0,
    online_wait_until_s: float = 105.0,
) -> placement.Step:
    return placement.plan(
        ranked,
        model="m",
        failed_on=failed_on or {},
        held=held,
        now_s=now_s,
        online_wait_until_s=online_wait_until_s,
    )


def test_the_routers_order_is_tried_as_it_is() -> None:
    assert plan([B, A, C]) == Try((B, A, C))


def test_the_endpoint_the_task_is_held_on_goes_first_the_rest_in_the_routers_order() -> None:
    assert plan([A, B, C], held="c") == Try((C, A, B))


def test_a_held_endpoint_the_router_left_out_is_not_tried() -> None:
    assert plan([A, B], held="c") == Try((A, B))


def test_endpoints_that_failed_the_task_are_not_tried_again() -> None:
    assert plan([A, B, C], failed_on={"a": "TaskTimeoutError"}) == Try((B, C))


def test_nothing_online_waits_until_the_online_wait_ends() -> None:
    assert plan([], now_s=100.0, online_wait_until_s=105.0) == Wait("online")


def test_nothing_online_after_the_online_wait_fails_naming_the_model() -> None:
    step = plan([], now_s=106.0, online_wait_until_s=105.0)
    assert step == Fail("no endpoint can run m now (offline, circuit open, or failed: {})")


def test_every_endpoint_failed_fails_at_once_naming_the_failures() -> None:
    # A failure is an answer: no waiting for another endpoint to come online.
    step = plan([A], failed_on={"a": "RemoteDied"}, now_s=100.0, online_wait_until_s=105.0)
    assert isinstance(step, Fail)
    assert step.reason.endswith("failed: {'a': 'RemoteDied'})")


def test_a_full_house_waits_for_a_slot_until_the_deadline_then_fails() -> None:
    assert placement.slot_wait(now_s=10.0, deadline_s=10.0) == Wait("slot")
    assert placement.slot_wait(now_s=10.5, deadline_s=10.0) == Fail(
        "every endpoint serving the model stayed full"
    )
