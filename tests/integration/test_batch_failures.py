"""Batch when things go wrong, on the moto server with the real worker and the real
``batch_shard`` function: an input file deleted before the worker reads it, a shard whose task
keeps failing (tried the bounded number of times, then its lines are errors), a task lost after
it ran (its lines once), and an endpoint that goes down mid-batch (the batch resumes elsewhere
without running a finished shard again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chalicelib.auth import Principal
from chalicelib.services import Services
from tests.integration.pollers import forget_endpoints
from tests.integration.test_batch import (  # noqa: F401 - fixtures
    MODEL,
    InProcessEndpoint,
    batch_services,
    batch_services_for,
    final,
    lines,
    registry_path,
    running_worker,
    upload,
)


def create(services: Services, user: Principal, file_id: str) -> str:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return str(services.batch_api.create_batch(user, json.dumps(body).encode())["id"])


def custom_ids(services: Services, user: Principal, file_id: str | None) -> list[str]:
    if file_id is None:
        return []
    data = services.batch_api.file_content(user, file_id).data or b""
    return [json.loads(x)["custom_id"] for x in data.splitlines()]


def tries(endpoint: InProcessEndpoint, batch_id: str, shard: int) -> list[str]:
    return sorted(k for k in endpoint.runs if k.startswith(f"{batch_id}-shard-{shard}-"))


def test_a_batch_whose_input_file_was_deleted_fails_naming_the_file(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    user = Principal(id="batch-gone", username="batch-gone")
    file_id = upload(s, user, lines(2))
    batch_id = create(s, user, file_id)
    s.batch_api.delete_file(user, file_id)  # before any worker has read it
    with running_worker(s, lambda e: InProcessEndpoint()) as worker:
        done = final(s, user, batch_id)
    assert done["status"] == "failed" and done["failed_at"], done
    assert done["errors"]["data"] == [
        {
            "code": "input_file_not_found",
            "line": None,
            "message": f"The input file {file_id} no longer exists.",
            "param": "input_file_id",
        }
    ]
    # Failed once and for all: the message was consumed, not left to go round to the DLQ.
    assert worker.counts["input_missing"] == 1 and worker.counts["batch_errors"] == 0


def test_a_shard_that_keeps_failing_is_tried_the_bound_then_its_lines_are_errors(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services

    def lose_shard_1(task: dict[str, Any]) -> None:
        if task["shard"] == 1:
            raise ConnectionError("the endpoint lost the task")

    endpoint = InProcessEndpoint(before=lose_shard_1)
    user = Principal(id="batch-flaky", username="batch-flaky")
    with running_worker(s, lambda e: endpoint) as worker:
        batch_id = create(s, user, upload(s, user, lines(7)))
        done = final(s, user, batch_id)
    attempts = s.settings.batch_shard_attempts
    assert attempts > 1
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 7, "completed": 4, "failed": 3}
    assert tries(endpoint, batch_id, 1) == [
        f"{batch_id}-shard-1-try-{k}" for k in range(1, attempts + 1)
    ]
    assert all(endpoint.runs[k] == 1 for k in tries(endpoint, batch_id, 1))
    assert tries(endpoint, batch_id, 0) == [f"{batch_id}-shard-0-try-1"]
    assert tries(endpoint, batch_id, 2) == [f"{batch_id}-shard-2-try-1"]
    assert worker.counts["shard_errors"] == attempts
    # The other shards' lines are answered, in input order; shard 1's are in the error file.
    assert custom_ids(s, user, done["output_file_id"]) == ["line-0", "line-1", "line-2", "line-6"]
    data = s.batch_api.file_content(user, done["error_file_id"]).data or b""
    errors = [json.loads(x) for x in data.splitlines()]
    assert [e["custom_id"] for e in errors] == ["line-3", "line-4", "line-5"]
    for line in errors:
        # OpenAI's batch error line: id, custom_id, no response, error {code, message}.
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["response"] is None
        assert line["error"]["code"] == "shard_failed"
        assert "the endpoint lost the task" in line["error"]["message"]
    assert len({e["id"] for e in errors}) == 3


def test_a_shard_whose_first_try_is_lost_after_running_yields_its_lines_once(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services

    def lose_first_result(task: dict[str, Any]) -> None:
        # It ran and uploaded its lines; the endpoint died before the result came back.
        if task["shard"] == 0 and task["request_id"].endswith("-try-1"):
            raise ConnectionError("the endpoint lost the task's result")

    endpoint = InProcessEndpoint(after=lose_first_result)
    user = Principal(id="batch-retry", username="batch-retry")
    with running_worker(s, lambda e: endpoint):
        batch_id = create(s, user, upload(s, user, lines(7)))
        done = final(s, user, batch_id)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 7, "completed": 7, "failed": 0}
    assert tries(endpoint, batch_id, 0) == [f"{batch_id}-shard-0-try-{k}" for k in (1, 2)]
    assert custom_ids(s, user, done["output_file_id"]) == [f"line-{i}" for i in range(7)]
    assert done["error_file_id"] is None


def test_an_endpoint_that_goes_down_mid_batch_loses_one_shard_and_none_finished_runs_again(
    stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    # One shard at a time, so the order is fixed: shard 0 finishes on local-a; local-a goes
    # down while it holds shard 1 (its heartbeat gone, the task lost); the worker retries shard
    # 1 on local-b, which takes the rest. Shard 0 is done and is never run again.
    s = batch_services_for(stage, registry_path, batch_max_inflight_shards=1)
    forget_endpoints(s)
    s.endpoint_store.heartbeat("local-a", capacity=4, models={MODEL: "hot"})

    def crash_on_second_task(task: dict[str, Any]) -> None:
        if len(by_name["local-a"].tasks) == 2:
            forget_endpoints(s)  # local-a's heartbeat stops: the router sees it offline
            s.endpoint_store.heartbeat("local-b", capacity=4, models={MODEL: "hot"})
            raise ConnectionError("local-a went down; the tasks it held are lost")

    by_name = {
        "local-a": InProcessEndpoint(before=crash_on_second_task),
        "local-b": InProcessEndpoint(),
    }
    user = Principal(id="batch-crash", username="batch-crash")
    with running_worker(
        s, lambda e: by_name[e.name], endpoints=s.endpoint_store, policy=s.circuit_policy
    ):
        batch_id = create(s, user, upload(s, user, lines(12)))
        done = final(s, user, batch_id)
    forget_endpoints(s)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    a, b = by_name["local-a"].runs, by_name["local-b"].runs
    assert dict(a) == {f"{batch_id}-shard-0-try-1": 1, f"{batch_id}-shard-1-try-1": 1}
    assert dict(b) == {
        f"{batch_id}-shard-1-try-2": 1,
        f"{batch_id}-shard-2-try-1": 1,
        f"{batch_id}-shard-3-try-1": 1,
    }
    assert custom_ids(s, user, done["output_file_id"]) == [f"line-{i}" for i in range(12)]
    record = s.batch_store.get(user.id, batch_id)
    assert record is not None
    assert record["shard_endpoints"] == {
        "0": ["local-a", 1],
        "1": ["local-b", 2],
        "2": ["local-b", 1],
        "3": ["local-b", 1],
    }
