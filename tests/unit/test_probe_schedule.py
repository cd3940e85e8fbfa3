"""How often a poller's StatusBoard asks each endpoint: local ones fast, Globus ones backing off."""

from __future__ import annotations

from typing import Any

from chalicelib.logs import get_logger
from chalicelib.poller.board import GlobusProbe, StatusBoard, next_probe_s
from chalicelib.registry import Endpoint, Registry
from chalicelib.router import CircuitPolicy
from chalicelib.stores.endpoints import EndpointStore


def waits(executor: str, rounds: int, **state: bool) -> list[float]:
    out: list[float] = []
    previous: float | None = None
    for _ in range(rounds):
        previous = next_probe_s(
            executor, previous_s=previous, probe_s=5.0, backoff_cap_s=30.0, **state
        )
        out.append(previous)
    return out


def test_a_settled_endpoint_is_probed_every_probe_s_whatever_runs_it() -> None:
    assert waits("local", 3, down=False, starting=False) == [5.0, 5.0, 5.0]
    assert waits("globus", 3, down=False, starting=False) == [5.0, 5.0, 5.0]


def test_a_starting_model_is_probed_every_second() -> None:
    assert waits("local", 3, down=False, starting=True) == [1.0, 1.0, 1.0]
    assert waits("globus", 3, down=False, starting=True) == [1.0, 1.0, 1.0]


def test_a_down_local_endpoint_is_probed_every_second_a_down_globus_one_backs_off() -> None:
    assert waits("local", 8, down=True, starting=False) == [1.0] * 8
    assert waits("globus", 8, down=True, starting=False) == [1, 2, 4, 8, 16, 30, 30, 30]


class Offline:
    """The Globus Compute SDK client's answer for an endpoint that is down."""

    def __init__(self) -> None:
        self.calls = 0

    def get_endpoint_status(self, endpoint_id: str) -> dict[str, Any]:
        self.calls += 1
        return {"status": "offline"}


def test_a_minute_down_costs_a_globus_endpoint_a_handful_of_status_calls_not_sixty() -> None:
    registry = Registry.from_dict(
        {
            "endpoints": [
                {"name": "hpc", "endpoint_id": "uuid-hpc", "executor": "globus", "models": []},
                {"name": "local-a", "endpoint_id": "local-a", "executor": "local", "models": []},
            ]
        }
    )
    local_calls: list[str] = []

    def local_down(endpoint: Endpoint) -> bool:
        local_calls.append(endpoint.name)
        return False

    client = Offline()
    board = StatusBoard(
        registry,
        EndpointStore(None, "unused"),  # nothing is up: no heartbeat is written
        get_logger("test-board"),
        probe_s=5.0,
        probes={"local": local_down, "globus": GlobusProbe(client, cache_s=0.0)},
        policy=CircuitPolicy(stale_s=30.0),
    )
    for second in range(60):  # the probe loop's ticks, one a second
        board.probe_due(1000.0 + second)
    assert len(local_calls) == 60
    # At 0, 1, 3, 7, 15, 31 s after it went down (then every 30 s): 6 calls in the minute.
    assert client.calls == 6


def test_the_globus_status_is_asked_once_per_cache_period() -> None:
    client = Offline()
    probe = GlobusProbe(client, cache_s=5.0)
    registry = Registry.from_dict(
        {"endpoints": [{"name": "hpc", "endpoint_id": "u", "models": []}]}
    )
    (endpoint,) = registry.endpoints
    assert [probe(endpoint) for _ in range(5)] == [False] * 5
    assert client.calls == 1
