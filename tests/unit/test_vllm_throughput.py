"""Throughput mode on the vLLM engine: a shard's lines go to ``vllm serve`` as concurrent
requests (its continuous batching runs them together, the engine loop ``vllm run-batch`` uses),
up to ``concurrency`` at once, and their answers come back in input order.

The server is a local stand-in speaking vLLM's chat completions protocol: each request waits
at a barrier of ``concurrency`` parties, so the shard finishes only if that many requests are
in flight together, and the server counts the most it ever held at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.throughput import run_many
from hpc_functions.engines.vllm import VllmEngine
from tests.servers import serving

CONCURRENCY = 4
# How long a request waits for the others before the server gives up on the barrier: reached
# only when the client sends fewer than CONCURRENCY at once, and then the test fails.
BARRIER_WAIT_S = 30


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.inflight += 1
            self.server.most = max(self.server.most, self.server.inflight)
        try:
            self.server.barrier.wait(self.server.wait_s)
            status, answer = 200, self._completion(body)
        except threading.BrokenBarrierError:
            status, answer = 500, {"error": {"message": "too few requests at once", "code": 500}}
        finally:
            with self.server.lock:
                self.server.inflight -= 1
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        said = body["messages"][-1]["content"]
        return {
            "id": f"chatcmpl-{said}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo {said}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(CONCURRENCY)
        self.wait_s: float = BARRIER_WAIT_S
        self.inflight = 0
        self.most = 0


@pytest.fixture
def server() -> Iterator[Server]:
    with serving(Server()) as s:
        yield s


def body(i: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"line-{i}"}], "max_tokens": 2}


def test_a_shard_keeps_up_to_concurrency_requests_in_flight_and_answers_in_input_order(
    server: Server,
) -> None:
    port = server.server_address[1]
    engine = VllmEngine({"kind": "vllm", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1"})
    lines = [body(i) for i in range(3 * CONCURRENCY)]
    outcomes = run_many(engine, "chat_completions", lines, concurrency=CONCURRENCY)
    assert not any(isinstance(o, EngineError) for o in outcomes), outcomes
    texts = [o["choices"][0]["message"]["content"] for o in outcomes]  # type: ignore[index]
    assert texts == [f"echo line-{i}" for i in range(len(lines))]
    # Every barrier of CONCURRENCY filled, and never more requests at once than asked for.
    assert server.most == CONCURRENCY


def test_one_at_a_time_never_fills_the_barrier(server: Server) -> None:
    """The barrier really needs CONCURRENCY requests at once: sequential lines all fail."""
    port = server.server_address[1]
    engine = VllmEngine({"kind": "vllm", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1"})
    server.wait_s = 0.2  # only how soon the lone request gives up; nothing is timed
    outcomes = run_many(engine, "chat_completions", [body(0), body(1)], concurrency=1)
    assert all(isinstance(o, EngineError) for o in outcomes)
    assert server.most == 1
