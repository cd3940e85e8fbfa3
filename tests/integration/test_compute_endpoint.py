"""The local compute endpoint: tasks keyed by request id, and no worker outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def start_endpoint(port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port), *args],
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


def test_same_request_id_attaches_to_one_task_and_workers_die_with_the_endpoint() -> None:
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
    proc = start_endpoint(port, "--workers", "1", "--no-preheat")
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
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port), "--workers", "1"],
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
