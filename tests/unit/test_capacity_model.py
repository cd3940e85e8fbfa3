"""The capacity model's arithmetic (bench/capacity.py): Little's law, which bound binds, pollers
and cost move the right way."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.capacity import Deployment, Model, Quotas, table


def with_engine(engine_s: float, **deployment: int) -> Model:
    return Model(deployment=Deployment(engine_s=engine_s, **deployment))


def test_lambda_bound_is_concurrency_over_how_long_a_call_waits() -> None:
    model = with_engine(1.95)
    assert model.interactive_bounds()["lambda_concurrency"] == pytest.approx(1000 / 2.0)
    doubled = replace(model, quotas=Quotas(lambda_concurrency=2000))
    assert doubled.interactive_bounds()["lambda_concurrency"] == pytest.approx(1000.0)


@pytest.mark.parametrize("short, long", [(0.5, 2.0), (2.0, 10.0), (10.0, 25.0)])
def test_longer_generations_lower_the_lambda_bound_and_raise_the_cost(
    short: float, long: float
) -> None:
    fast, slow = with_engine(short), with_engine(long)
    assert (
        slow.interactive_bounds()["lambda_concurrency"]
        < fast.interactive_bounds()["lambda_concurrency"]
    )
    assert sum(slow.cost_per_million().values()) > sum(fast.cost_per_million().values())
    assert slow.engine_rps() < fast.engine_rps()


def test_one_task_per_globus_submit_binds_first_and_batching_moves_it_to_lambda() -> None:
    assert with_engine(2.0, tasks_per_submit=1).binding() == ("globus_submissions", 2.0)
    # As deployed: group-committed submissions of up to 64 tasks → 128 req/s per client.
    assert with_engine(2.0).interactive_bounds()["globus_submissions"] == pytest.approx(128.0)
    lifted = with_engine(10.0, globus_clients=8, tasks_per_submit=16)
    name, rps = lifted.binding()
    assert name == "lambda_concurrency" and rps == pytest.approx(1000 / 10.05)


def test_pollers_cover_cpu_and_in_flight_room() -> None:
    model = with_engine(10.0)
    assert model.pollers_needed(1.0) == 1
    # 100 req/s held 10.05 s = 1,005 in flight / 128 per poller → 8 pollers.
    assert model.pollers_needed(100.0) == 8
    assert model.pollers_needed(200.0) > model.pollers_needed(100.0)


def test_globus_polls_double_to_their_cap() -> None:
    # 0.2 + 0.4 + 0.8 + 1.6 = 3.0 s ≥ 2 s: four polls; then one every 2 s.
    assert with_engine(2.0).globus_polls_per_task() == 4
    assert with_engine(7.0).globus_polls_per_task() == 6


def test_streams_are_bound_by_pushes_per_second() -> None:
    bounds = Model().stream_bounds()
    assert bounds["api_gateway_rps"] == pytest.approx(10_000 / 20)


def test_the_table_has_a_row_per_engine_time() -> None:
    rows = table([1.0, 5.0]).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| 1 |") and rows[3].startswith("| 5 |")
