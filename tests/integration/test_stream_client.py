"""The streaming client against small WebSocket servers: it gives up on a request that stays
silent, naming it, instead of hanging; it shows a retried push once."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from first_cli.client import StreamClient, StreamError


@contextmanager
def gateway(handler: Callable[[ServerConnection], None]) -> Iterator[Server]:
    """A WebSocket server on a free port, running ``handler`` for each connection."""
    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def silent_gateway() -> Iterator[Server]:
    """Accepts a request, says which request id it got, then never sends its final frame."""

    def handler(conn: ServerConnection) -> None:
        for message in conn:
            ref = json.loads(message)["id"]
            conn.send(
                json.dumps(
                    {
                        "type": "chunk",
                        "id": ref,
                        "request_id": "req_1",
                        "seq": 1,
                        "part": 0,
                        "data": {},
                    }
                )
            )

    with gateway(handler) as server:
        yield server


def test_a_request_with_no_final_frame_times_out_naming_its_id(silent_gateway: Server) -> None:
    port = silent_gateway.socket.getsockname()[1]
    with StreamClient(f"ws://127.0.0.1:{port}", "key", idle_timeout_s=0.5) as client:
        frames = client.frames("chat.completions", {"model": "m", "messages": []})
        assert next(frames)["type"] == "chunk"
        with pytest.raises(StreamError) as caught:
            next(frames)
    assert caught.value.status == 504 and caught.value.request_id == "req_1"
    assert caught.value.error["code"] == "timeout"
    assert "GET /v1/requests/req_1" in caught.value.error["message"]


def chunk_frame(ref: str, seq: int, part: int, text: str) -> str:
    data = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": part, "delta": {"content": text}, "finish_reason": None}],
    }
    frame = {"type": "chunk", "id": ref, "request_id": "req_1", "seq": seq, "part": part}
    return json.dumps({**frame, "data": data})


@pytest.fixture
def retrying_gateway() -> Iterator[Server]:
    """Sends push 1 (two parts), push 1 again (a retry another relay container posted), push 2,
    then ``done``."""

    def handler(conn: ServerConnection) -> None:
        for message in conn:
            ref = json.loads(message)["id"]
            for seq, part, text in (
                (1, 0, "a"),
                (1, 1, "b"),
                (1, 0, "a"),
                (1, 1, "b"),
                (2, 0, "c"),
            ):
                conn.send(chunk_frame(ref, seq, part, text))
            usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            conn.send(
                json.dumps({"type": "done", "id": ref, "request_id": "req_1", "usage": usage})
            )

    with gateway(handler) as server:
        yield server


def test_a_retried_push_is_yielded_once(retrying_gateway: Server) -> None:
    port = retrying_gateway.socket.getsockname()[1]
    with StreamClient(f"ws://127.0.0.1:{port}", "key") as client:
        frames: list[dict[str, Any]] = list(
            client.frames("chat.completions", {"model": "m", "messages": []})
        )
    assert [(f["type"], f.get("seq"), f.get("part")) for f in frames] == [
        ("chunk", 1, 0),
        ("chunk", 1, 1),
        ("chunk", 2, 0),
        ("done", None, None),
    ]


@pytest.fixture
def dying_gateway() -> Iterator[Server]:
    """Sends one chunk of the request, then closes the connection (its process killed)."""

    def handler(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(chunk_frame(json.loads(message)["id"], 1, 0, "a"))
            conn.close()

    with gateway(handler) as server:
        yield server


def test_a_connection_closed_mid_request_names_the_request_to_collect(
    dying_gateway: Server,
) -> None:
    port = dying_gateway.socket.getsockname()[1]
    with StreamClient(f"ws://127.0.0.1:{port}", "key") as client:
        frames = client.frames("chat.completions", {"model": "m", "messages": []})
        assert next(frames)["type"] == "chunk"
        with pytest.raises(StreamError) as caught:
            next(frames)
    assert caught.value.status == 503 and caught.value.request_id == "req_1"
    assert caught.value.error["code"] == "connection_closed"
    assert "GET /v1/requests/req_1" in caught.value.error["message"]
