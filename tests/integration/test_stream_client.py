"""The streaming client gives up on a request that stays silent, naming it, instead of hanging."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from first_cli.client import StreamClient, StreamError


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

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()


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
