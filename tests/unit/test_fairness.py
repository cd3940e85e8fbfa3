"""The next free slot goes to the owner with the fewest running, then the oldest request."""

import threading

from chalicelib.poller.fairness import FairGate, next_up


def test_next_up_prefers_the_owner_with_least_running_then_arrival() -> None:
    waiting = {1: ("flood", 1), 2: ("flood", 2), 3: ("quiet", 3)}
    assert next_up(waiting, {"flood": 6}) == 3
    assert next_up(waiting, {}) == 1
    assert next_up(waiting, {"flood": 1, "quiet": 1}) == 1
    assert next_up({}, {}) is None


def test_a_quiet_users_request_goes_before_a_flood_already_waiting() -> None:
    gate = FairGate()
    order: list[str] = []
    started = threading.Event()

    with gate.line("flood") as running:
        assert running.wait_turn(0)
        running.start()  # the flood has one running
        places = []
        for who in ["flood", "flood", "flood", "quiet"]:
            ctx = gate.line(who)
            places.append((ctx, ctx.__enter__()))
        # Only the quiet user's request is next up, though it arrived last.
        turns = [p.wait_turn(0) for _, p in places]
        assert turns == [False, False, False, True]
        order.append(places[3][1].owner)
        places[3][1].start()
        started.set()
        # With one running each, the oldest flood request is next.
        assert places[0][1].wait_turn(0)
        for ctx, _ in reversed(places):
            ctx.__exit__(None, None, None)
    assert gate.waiting() == 0 and order == ["quiet"]


def test_a_failed_request_goes_back_in_line_at_its_place() -> None:
    gate = FairGate()
    with gate.line("a") as first, gate.line("a") as second:
        assert first.wait_turn(0)
        first.start()
        assert second.wait_turn(0)
        first.back_in_line()  # its endpoint failed: it is older, so it is next again
        assert first.wait_turn(0) and not second.wait_turn(0)


def test_a_request_stepping_aside_lets_the_next_go_and_comes_back_at_its_place() -> None:
    gate = FairGate()
    with gate.line("a") as first, gate.line("b") as second:
        assert first.wait_turn(0) and not second.wait_turn(0)
        first.step_aside()  # nothing can run it now
        assert second.wait_turn(0) and not first.wait_turn(0)
        first.back_in_line()
        assert first.wait_turn(0) and not second.wait_turn(0)  # first by arrival again
    assert gate.waiting() == 0
