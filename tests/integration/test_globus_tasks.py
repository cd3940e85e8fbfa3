"""Globus Compute tasks by id: the real ``globus_compute_sdk.Client`` over a recorded web service.

The poller keeps a Globus task id on the request record; a poller that re-claims the request
(its predecessor died) collects that task instead of submitting the request again; a task that
runs past ``FIRST_TASK_TIMEOUT_S`` sends the request to another deployment, and with none left
the request fails with an OpenAI error naming its id. Moto is real, the poller is real; only the
Globus Compute service's HTTP answers are recorded (``tests/integration/globus_service.py``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import responses

from chalicelib.compute.errors import RemoteTaskError, TaskLostError
from chalicelib.compute.globus import GlobusTasks, SubmissionPacer
from chalicelib.compute.sizes import pack_task, submitted_bytes
from chalicelib.poller.worker import Poller
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from hpc_functions import offload
from tests.integration.globus_service import GlobusService, Raised
from tests.integration.pollers import forget_endpoints, poller_services, pollers
from tests.integration.test_poller import MODEL, ScriptedExecutor, response, submit, wait_until

CHAT_FN = "0b5e4f8a-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
GLOBUS_EP = "5f0c2a9e-7b1d-4c3e-9f8a-1b2c3d4e5f60"


@pytest.fixture
def globus_http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    """A Globus cluster (preferred: higher priority) and the local cluster local-b."""
    local = json.loads((REPO_ROOT / "infra" / "deployments" / "local.json").read_text())
    b = next(e for e in local["endpoints"] if e["name"] == "local-b")
    globus = {
        **b,
        "name": "globus-a",
        "endpoint_id": GLOBUS_EP,
        "executor": "globus",
        "priority": 5,
        "functions": {"chat_completions": CHAT_FN},
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"stage": "it", "endpoints": [globus, b]}))
    return path


def make_services(stage: str, registry_file: Path, **settings: Any) -> Services:
    # These tests route by priority (globus-a first); a conversation's home would pick by hash
    # (affinity has its own tests: test_affinity_router, test_poller).
    settings.setdefault("affinity", False)
    services = poller_services(stage, registry_file, **settings)
    forget_endpoints(services)
    return services


@pytest.fixture
def run_poller() -> Iterator[Callable[..., Poller]]:
    with ExitStack() as stack:

        def start(services: Services, executors: dict[str, Any]) -> Poller:
            start_poller = stack.enter_context(pollers(services))
            return start_poller(lambda endpoint: executors[endpoint.name])

        yield start


def finished(services: Services, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        record = services.requests.get(request_id)
        if record is not None and record["status"] in ("completed", "failed"):
            return record
        assert time.monotonic() < deadline, f"{request_id} never finished"
        time.sleep(0.05)


def test_a_task_is_submitted_by_id_collected_by_polling_and_its_errors_kept_apart(
    globus_http: responses.RequestsMock,
) -> None:
    outcomes = {
        "ok": lambda n: None if n < 3 else {"response": {"id": "x"}},
        "raised": lambda n: Raised("Traceback (most recent call last):\nValueError: bad prompt"),
        "lost": lambda n: Raised("parsl.executors.high_throughput.errors.WorkerLost: gone"),
    }
    service = GlobusService(globus_http, lambda task, n: outcomes[task["kind"]](n))
    tasks = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    try:
        task_id, future = tasks.submit_task(CHAT_FN, args=({"kind": "ok"},))
        assert service.submitted == [task_id]
        assert future.result(10) == {"response": {"id": "x"}}
        assert service.reads[task_id] == 3  # polled while pending, then collected
        with pytest.raises(RemoteTaskError, match="ValueError: bad prompt"):
            tasks.submit_to_registered_function(CHAT_FN, args=({"kind": "raised"},)).result(10)
        with pytest.raises(TaskLostError, match="worker lost"):
            tasks.submit_to_registered_function(CHAT_FN, args=({"kind": "lost"},)).result(10)
        # A task some other process submitted is collected by its id alone.
        other = service.add_task({"kind": "ok"})
        assert tasks.attach(other).result(10) == {"response": {"id": "x"}}
        assert len(service.submitted) == 3
    finally:
        tasks.shutdown(cancel_futures=True)


def test_concurrent_submissions_share_batch_runs_and_polls_and_nothing_is_kept(
    globus_http: responses.RequestsMock,
) -> None:
    """Globus Compute allows 20 submissions per 10 s per client: under load, tasks arriving
    while one submission is in flight go together in the next, each caller still learns its own
    task id, and pending tasks are read in one batch_status call rather than one each."""
    service = GlobusService(
        globus_http,
        lambda task, n: (
            Raised("Traceback:\nValueError: no")
            if task["i"] == 7
            # every task stays pending for its first two reads: polling has work to batch
            else (None if n < 3 else {"echo": task["i"]})
        ),
    )
    service.submit_delay_s = 0.2
    tasks = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    out: dict[int, tuple[str, Any]] = {}

    def one(i: int) -> None:
        task_id, future = tasks.submit_task(CHAT_FN, args=({"i": i},))
        try:
            out[i] = (task_id, future.result(20))
        except RemoteTaskError as exc:
            out[i] = (task_id, exc)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(out) == list(range(24))
        # Each caller got its own task and its own result, the failed one its own exception.
        assert len({task_id for task_id, _ in out.values()}) == 24
        assert all(out[i][1] == {"echo": i} for i in range(24) if i != 7)
        assert isinstance(out[7][1], RemoteTaskError) and "ValueError: no" in str(out[7][1])
        assert sum(service.submissions) == 24 == len(service.submitted)
        assert len(service.submissions) < 24 and max(service.submissions) > 1
        assert tasks.submissions == len(service.submissions)
        # Pending tasks were read in batches; one by one only the failed task (the SDK leaves
        # failures out of a batch answer) and nothing else.
        assert service.batch_polls < sum(service.reads.values())
        assert service.single_polls == 1
        # The SDK client's cache of finished tasks is emptied as results are collected.
        assert tasks.client._task_status_table == {}
    finally:
        tasks.shutdown(cancel_futures=True)


def test_the_pacer_holds_submissions_to_the_services_rate() -> None:
    pacer = SubmissionPacer(limit=3, window_s=10.0)
    for t in (0.0, 1.0, 2.0):
        assert pacer.wait_s(t) == 0.0
        pacer.sent(t)
    assert pacer.wait_s(2.5) == pytest.approx(7.5)  # the fourth waits for the first to age out
    assert pacer.wait_s(10.0) == 0.0
    pacer.sent(10.0)
    assert pacer.wait_s(10.5) == pytest.approx(0.5)


def test_a_reclaimed_request_attaches_to_its_globus_task_instead_of_running_again(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    services = make_services(stage, registry_file)
    # The task of a poller that died: still running for two reads, then done.
    service = GlobusService(
        globus_http, lambda task, n: None if n < 2 else {"response": response(task["request_id"])}
    )
    request_id = f"req_{uuid.uuid4().hex}"
    services.requests.create(
        {
            "request_id": request_id,
            "owner": "alice",
            "model": MODEL,
            "function": "chat_completions",
            "payload": json.dumps({"model": MODEL, "messages": []}),
        }
    )
    # The dead poller claimed it for globus-a (its lease there expires with it).
    services.requests.claim(request_id, slot="globus-a")
    task_id = service.add_task({"request_id": request_id})
    services.requests.note_task(request_id, "globus-a", task_id)
    # The dead poller's message reappears for the next poller.
    services.interactive_queue.send({"request_id": request_id})

    never = ScriptedExecutor(lambda task, n: pytest.fail("local-b must not run it"))
    globus = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    poller = run_poller(services, {"globus-a": globus, "local-b": never})
    record = finished(services, request_id)
    assert record["status"] == "completed" and record["endpoint"] == "globus-a"
    assert record["attempt"] == 2 and record["task"]["id"] == task_id
    assert service.submitted == []  # collected, never submitted again
    assert poller.counts["tasks_reattached"] == 1
    # Its slot given back (once unused for poller_slot_linger_s).
    wait_until(lambda: services.endpoint_store.statuses()["globus-a"].inflight == 0, "the slot")


def test_a_task_past_its_timeout_moves_to_another_deployment(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    services = make_services(stage, registry_file, task_timeout_s=1.0)
    service = GlobusService(globus_http, lambda task, n: None)  # never finishes
    globus = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    local = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    poller = run_poller(services, {"globus-a": globus, "local-b": local})
    request_id = submit(services)
    record = finished(services, request_id)
    assert record["status"] == "completed" and record["endpoint"] == "local-b"
    assert len(service.submitted) == 1 and record["task"]["endpoint"] == "globus-a"
    assert local.attempts[request_id] == 1 and record["attempt"] == 1
    assert poller.counts["endpoint_failures"] == 1
    assert services.endpoint_store.statuses()["globus-a"].failures == 1


def test_with_every_deployment_timing_out_the_request_fails_naming_its_id(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    services = make_services(stage, registry_file, task_timeout_s=0.5, max_receive_count=1)
    service = GlobusService(globus_http, lambda task, n: None)
    globus = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    stuck = ScriptedExecutor(lambda task, n: time.sleep(5))
    run_poller(services, {"globus-a": globus, "local-b": stuck})
    request_id = submit(services)
    record = finished(services, request_id)
    assert record["status"] == "failed" and record["status_code"] == 500
    message = record["error"]["message"]
    assert request_id in message and record["error"]["code"] == "engine_error"
    assert "'globus-a': 'TaskTimeoutError'" in message
    assert "'local-b': 'TaskTimeoutError'" in message


# --- Globus Compute's size limits (5 MB per submission, 512 KB per result) -----------------

PROMPT_5_5_MB = "x" * 5_500_000


def test_a_task_over_the_submission_limit_is_never_sent_and_fails_413_at_once(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    """With the S3 path off, a 5.5 MB prompt makes a task the service would refuse: the
    executor refuses it first, and the request fails naming the limit, on its first try and
    on no other deployment (every one has the limit)."""
    services = make_services(stage, registry_file, compute_offload=False)
    service = GlobusService(globus_http, lambda task, n: pytest.fail("must not be submitted"))
    globus = GlobusTasks(
        GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05, submit_limit_bytes=5_000_000
    )
    never = ScriptedExecutor(lambda task, n: pytest.fail("local-b must not run it"))
    poller = run_poller(services, {"globus-a": globus, "local-b": never})
    request_id = submit(services, PROMPT_5_5_MB)
    record = finished(services, request_id)
    assert record["status"] == "failed" and record["status_code"] == 413
    assert record["error"]["code"] == "request_too_large" and record["attempt"] == 1
    message = record["error"]["message"]
    assert request_id in message and "submission limit of 5000000 bytes" in message
    assert service.submissions == [] and never.attempts == {}
    assert poller.counts["tasks_too_large"] == 1 and poller.counts["endpoint_failures"] == 0


def test_a_large_prompt_reaches_a_globus_task_by_url_and_its_result_comes_back_by_url(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    """The same 5.5 MB prompt with the S3 path on: the submission carries a URL (a few KB,
    packed by the SDK), the node fetches the body from S3 and stores a large result there."""
    services = make_services(stage, registry_file)
    globus_http.add_passthru(os.environ["AWS_ENDPOINT_URL"])  # the node reaches S3 (moto)

    def node(task: dict[str, Any], n: int) -> Any:
        if n < 2:
            return None  # running
        task = offload.fetch_body(task)
        out = response(task["request_id"])
        content = task["body"]["messages"][0]["content"]
        out["choices"][0]["message"]["content"] = content[:600_000]  # over 512 KB back
        out["usage"]["prompt_tokens"] = len(content)
        return offload.store_result(task, {"response": out, "engine_time_ms": 1.0})

    service = GlobusService(globus_http, node)
    globus = GlobusTasks(
        GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05, submit_limit_bytes=5_000_000
    )
    never = ScriptedExecutor(lambda task, n: pytest.fail("local-b must not run it"))
    run_poller(services, {"globus-a": globus, "local-b": never})
    request_id = submit(services, PROMPT_5_5_MB)
    record = finished(services, request_id)
    assert record["status"] == "completed" and record["endpoint"] == "globus-a"
    assert record["usage"]["prompt_tokens"] == len(PROMPT_5_5_MB)
    result = services.blobs.load(record, "result")
    assert result["choices"][0]["message"]["content"] == PROMPT_5_5_MB[:600_000]
    (task_id,) = service.submitted
    task = service.tasks[task_id]
    assert "body" not in task and task["body_from"]["bytes"] > 5_500_000
    assert submitted_bytes(pack_task((task,), {})) < 10_000


def test_a_result_the_service_refused_as_too_large_fails_at_once_naming_the_limit(
    stage: str,
    registry_file: Path,
    globus_http: responses.RequestsMock,
    run_poller: Callable[..., Poller],
) -> None:
    services = make_services(stage, registry_file, compute_offload=False)
    refused = Raised(
        "Traceback (most recent call last):\n  ...\nglobus_compute_sdk.errors.error_types."
        "MaxResultSizeExceeded: Task result of 9600123B exceeded current limit of 524288B"
    )
    service = GlobusService(globus_http, lambda task, n: refused)
    globus = GlobusTasks(GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05)
    never = ScriptedExecutor(lambda task, n: pytest.fail("local-b must not run it"))
    poller = run_poller(services, {"globus-a": globus, "local-b": never})
    request_id = submit(services)
    record = finished(services, request_id)
    assert record["status"] == "failed" and record["status_code"] == 500
    assert record["error"]["code"] == "result_too_large" and record["attempt"] == 1
    message = record["error"]["message"]
    assert f"{request_id} is 9600123 bytes" in message and "limit of 524288 bytes" in message
    assert "Traceback" not in message
    assert len(service.submitted) == 1 and never.attempts == {}
    assert poller.counts["results_too_large"] == 1


def test_a_group_commit_never_carries_more_than_the_submission_limit(
    globus_http: responses.RequestsMock,
) -> None:
    """Tasks of ~2 MB as submitted (1.5 MB of text, pickled and base64'd) piling up behind a
    slow submission: each batch_run takes what fits in 5 MB (two), never all that waits; every
    caller still gets its own task."""
    service = GlobusService(globus_http, lambda task, n: {"echo": task["i"]})
    service.submit_delay_s = 0.3
    tasks = GlobusTasks(
        GLOBUS_EP, service.client(), poll_min_s=0.01, poll_s=0.05, submit_limit_bytes=5_000_000
    )
    out: dict[int, Any] = {}

    def one(i: int) -> None:
        out[i] = tasks.submit_to_registered_function(
            CHAT_FN, args=({"i": i, "pad": "x" * 1_500_000},)
        ).result(30)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert out == {i: {"echo": i} for i in range(6)}
        assert sum(service.submissions) == 6 and max(service.submissions) == 2
    finally:
        tasks.shutdown(cancel_futures=True)
