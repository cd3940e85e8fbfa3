"""The local compute endpoint: tasks keyed by request id, and no worker outlives it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib.settings import REPO_ROOT
from offline.stack import free_port

TOKEN = "test-token-0123456789abcdef"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """/health's body once it says 200 (it answers 503 while its workers start)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = requests.get(f"{url}/health", timeout=1)
            if answer.status_code == 200:
                return answer.json()  # type: ignore[no-any-return]
            assert answer.status_code == 503 and answer.json()["status"] == "starting"
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)


def start_endpoint(port: int, run_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port)]
        + ["--run-dir", str(run_dir), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "FIRST_LOCAL_ENDPOINT_TOKEN": TOKEN},
    )


def test_endpoint_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FIRST_LOCAL_ENDPOINT_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", "1", "--no-preheat"],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "FIRST_LOCAL_ENDPOINT_TOKEN" in out.stderr


def test_same_request_id_attaches_to_one_task_and_workers_die_with_the_endpoint(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "offline.compute_endpoint",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-preheat",
            "--run-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "FIRST_LOCAL_ENDPOINT_TOKEN": TOKEN},
    )
    try:
        health = wait_healthy(url, proc)
        (worker,) = health["pids"]
        task = {"function_id": "local:health", "args": [{"request_id": "req_same"}]}
        http = requests.Session()
        # Without the stack's token nothing but /health answers: not tasks, not results.
        assert http.post(f"{url}/tasks", json=task, timeout=5).status_code == 401
        assert http.get(f"{url}/stats", timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert http.get(f"{url}/tasks/x", headers=wrong, timeout=5).status_code == 401
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        bad = http.post(f"{url}/tasks", data=b"{", timeout=5)
        assert bad.status_code == 400
        first = http.post(f"{url}/tasks", json=task, timeout=5).json()["task_id"]
        second = http.post(f"{url}/tasks", json=task, timeout=5).json()["task_id"]
        assert first == second == "task-req_same"
        state = http.get(f"{url}/tasks/{first}", params={"wait": 30}, timeout=40).json()
        assert state["status"] == "success" and state["result"]["status"] == "ok"
        assert http.get(f"{url}/stats", timeout=5).json()["runs"] == {"task-req_same": 1}

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while alive(worker):
            assert time.monotonic() < deadline, "a worker outlived its killed endpoint"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_cold_model_reports_starting_while_a_warm_task_loads_it_then_hot(
    tmp_path: Path,
) -> None:
    from hpc_functions.build_tiny_model import build

    engine = {"kind": "transformers", "model": "first/tiny-chat", "path": str(build(tmp_path))}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_endpoint(port, tmp_path / "run", "--workers", "1", "--no-preheat")
    try:
        health = wait_healthy(url, proc)
        assert health["models"]["first/tiny-chat"] == "cold"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        warm = {"function_id": "local:warm", "args": [{"engine": engine}]}
        task_id = http.post(f"{url}/tasks", json=warm, timeout=5).json()["task_id"]
        # The worker is loading it now (seconds): the endpoint says so, with no time yet known.
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["models"]["first/tiny-chat"] == "starting"
        assert "first/tiny-chat" not in health["ready_in_s"]
        state = http.get(f"{url}/tasks/{task_id}", params={"wait": 60}, timeout=70).json()
        assert state["status"] == "success" and state["result"]["status"] == "hot"
        assert requests.get(f"{url}/health", timeout=5).json()["models"]["first/tiny-chat"] == "hot"
        # Warm again: already hot, answered at once without a load.
        again = http.post(f"{url}/tasks", json=warm, params={"wait": 5}, timeout=10).json()
        assert again["status"] == "success" and again["result"] == {
            "status": "hot",
            "model": "first/tiny-chat",
        }
        # A request for the now hot model runs in the worker that loaded it.
        chat = {
            "request_id": "req_after_warm",
            "engine": engine,
            "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        }
        task = {"function_id": "local:chat_completions", "args": [chat]}
        done = http.post(f"{url}/tasks", json=task, params={"wait": 30}, timeout=40).json()
        assert done["status"] == "success" and done["result"]["response"]["choices"]
    finally:
        proc.kill()
        proc.wait()


def test_a_model_whose_preheat_fails_reads_unavailable_and_an_alias_reads_as_its_engine(
    tmp_path: Path,
) -> None:
    from hpc_functions.build_tiny_model import build

    tiny = {"kind": "transformers", "model": "first/tiny-chat", "path": str(build(tmp_path))}
    broken = {"kind": "transformers", "model": "first/broken", "path": "/nonexistent/model"}
    registry = tmp_path / "registry.json"
    models = [
        {"model": "first/tiny-chat", "engine": tiny},
        # Another registry name for the same engine (a model only one group may use).
        {"model": "first/tiny-chat-lab", "engine": tiny},
        {"model": "first/broken", "engine": broken},
    ]
    endpoint = {"name": "one", "endpoint_id": "one", "executor": "local", "models": models}
    registry.write_text(json.dumps({"endpoints": [endpoint]}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port), "--workers", "1"]
        + ["--run-dir", str(tmp_path / "run")],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "FIRST_LOCAL_ENDPOINT_TOKEN": TOKEN,
            "FIRST_REGISTRY_PATH": str(registry),
        },
        stderr=subprocess.PIPE,
    )
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert health["models"] == {
            "first/tiny-chat": "hot",
            "first/tiny-chat-lab": "hot",
            "first/broken": "unavailable",
        }
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    # The endpoint says why, in its own log.
    assert b"preheat of first/broken failed" in stderr and b"unavailable" in stderr


# What a real Globus Compute endpoint fails with, seen at the endpoint and by a real poller. One
# endpoint serves these tests: limits small enough to reach with a few bytes (the defaults are
# the service's 10 MiB), and a function `gone` registered from a module that its workers cannot
# import (the endpoint's own path has it; worker_init sets the workers' path, as on a cluster).
SUBMISSION_LIMIT = 4096
RESULT_LIMIT = 300
GONE_MODULE = """
from hpc_functions import FUNCTIONS as _HPC


def gone(task):
    return {"never": "runs"}


FUNCTIONS = {**_HPC, "gone": gone}
"""


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from hpc_functions.build_tiny_model import build

    path = build(tmp_path_factory.mktemp("tiny"))
    return {"kind": "transformers", "model": "first/tiny-chat", "path": str(path)}


@pytest.fixture(scope="module")
def strict_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    only_here = tmp_path_factory.mktemp("endpoint-only")
    (only_here / "gone_functions.py").write_text(GONE_MODULE)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port), "--workers", "1"]
        + ["--no-preheat", "--functions", "gone_functions"]
        + ["--run-dir", str(tmp_path_factory.mktemp("run"))],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": f"{only_here}{os.pathsep}{REPO_ROOT}",
            "FIRST_LOCAL_ENDPOINT_TOKEN": TOKEN,
            "FIRST_COMPUTE_SUBMIT_LIMIT_BYTES": str(SUBMISSION_LIMIT),
            "FIRST_COMPUTE_RESULT_LIMIT_BYTES": str(RESULT_LIMIT),
            # (Settings refuse an S3 threshold above the result limit; this endpoint has none.)
            "FIRST_COMPUTE_OFFLOAD": "false",
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def authorized() -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {TOKEN}"
    return http


def chat_task(engine: dict[str, Any], request_id: str, content: str = "hi") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "engine": engine,
        "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4},
    }


def test_a_function_whose_module_is_missing_on_the_worker_fails_with_the_remote_traceback(
    strict_endpoint: str, tiny_engine: dict[str, Any]
) -> None:
    task = {"function_id": "local:gone", "args": [chat_task(tiny_engine, "req_gone")]}
    done = (
        authorized()
        .post(f"{strict_endpoint}/tasks", json=task, params={"wait": 60}, timeout=70)
        .json()
    )

    # The service's shape: the task failed with the worker's traceback, code RemoteExecutionError.
    assert done["status"] == "failed" and done["code"] == "RemoteExecutionError"
    assert done["exception"].startswith("Traceback (most recent call last):")
    assert "ModuleNotFoundError: No module named 'gone_functions'" in done["exception"]


def test_a_submission_over_the_limit_is_refused_as_the_service_refuses_it_and_never_runs(
    strict_endpoint: str, tiny_engine: dict[str, Any]
) -> None:
    http = authorized()
    big = chat_task(tiny_engine, "req_big", "x" * SUBMISSION_LIMIT)
    task = {"function_id": "local:chat_completions", "args": [big]}
    refused = http.post(f"{strict_endpoint}/tasks", json=task, params={"wait": 5}, timeout=15)

    assert refused.status_code == 413
    body = refused.json()
    assert body["code"] == "TASK_PAYLOAD_TOO_LARGE"
    assert body["limit_bytes"] == SUBMISSION_LIMIT < body["size_bytes"]
    assert "task-req_big" not in http.get(f"{strict_endpoint}/stats", timeout=5).json()["runs"]


def test_a_result_over_the_limit_fails_with_max_result_size_exceeded(
    strict_endpoint: str, tiny_engine: dict[str, Any]
) -> None:
    task = {"function_id": "local:chat_completions", "args": [chat_task(tiny_engine, "req_r")]}
    done = (
        authorized()
        .post(f"{strict_endpoint}/tasks", json=task, params={"wait": 60}, timeout=70)
        .json()
    )

    assert done["status"] == "failed" and done["code"] == "MaxResultSizeExceeded"
    shape = re.fullmatch(r"MaxResultSizeExceeded\((\d+), (\d+)\)", done["exception"])
    assert shape is not None, done["exception"]
    assert int(shape.group(2)) == RESULT_LIMIT < int(shape.group(1))


def test_the_poller_fails_these_requests_at_once_with_openai_errors_that_say_why(
    strict_endpoint: str, tiny_engine: dict[str, Any], stage: str, tmp_path: Path
) -> None:
    from chalicelib.auth import Principal
    from chalicelib.compute.executors import LocalEndpointExecutor
    from chalicelib.errors import EngineFailedError, PayloadTooLargeError
    from chalicelib.protocol import ChatCompletionRequest
    from tests.integration.pollers import forget_endpoints, poller_services, pollers

    def endpoint(name: str, model: str, function: str) -> dict[str, Any]:
        deployment = {"model": model, "owned_by": "first", "endpoints": ["chat_completions"]}
        return {
            "name": name,
            "endpoint_id": name,
            "executor": "local",
            "max_inflight": 4,
            "url": strict_endpoint,
            "functions": {"chat_completions": f"local:{function}"},
            "models": [{**deployment, "engine": tiny_engine}],
        }

    registry = tmp_path / "registry.json"
    registry.write_text(
        json.dumps(
            {
                "stage": "local",
                "endpoints": [
                    endpoint("strict", "first/tiny-chat", "chat_completions"),
                    endpoint("no-module", "first/gone-chat", "gone"),
                ],
            }
        )
    )
    services = poller_services(stage, registry)
    forget_endpoints(services)
    user = Principal(id="alice", username="alice", kind="user")

    def ask(model: str, content: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
        request = ChatCompletionRequest.model_validate(body)
        return services.gateway.submit(user, "chat_completions", request)

    with pollers(services) as start:
        poller = start(lambda e: LocalEndpointExecutor(e.url or "", TOKEN))
        missing = ask("first/gone-chat", "hi")
        big = ask("first/tiny-chat", "x" * SUBMISSION_LIMIT)
        long_answer = ask("first/tiny-chat", "hi")

        with pytest.raises(EngineFailedError) as failed:
            services.gateway.wait(missing, 90)
        assert failed.value.code == "engine_error"
        assert "ModuleNotFoundError: No module named 'gone_functions'" in failed.value.message
        assert "Traceback" not in failed.value.message  # the last line, not the traceback

        with pytest.raises(PayloadTooLargeError) as refused:
            services.gateway.wait(big, 90)
        assert refused.value.code == "request_too_large"
        assert f"submission limit of {SUBMISSION_LIMIT} bytes" in refused.value.message

        with pytest.raises(EngineFailedError) as too_long:
            services.gateway.wait(long_answer, 90)
        assert too_long.value.code == "result_too_large"
        assert f"result limit of {RESULT_LIMIT} bytes" in too_long.value.message

    for request_id in (missing, big, long_answer):
        record = services.requests.get(request_id)
        # Failed on the first try: the request's failure, neither retried nor failed over.
        assert record is not None and record["status"] == "failed" and record["attempt"] == 1
    assert poller.counts["endpoint_failures"] == 0
