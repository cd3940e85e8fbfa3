"""The WebSocket message size limit: API Gateway's 128 KB, which the local WebSocket API applies
the same way. A larger message never reaches the handler: the connection is closed with 1009
("message too big"), the WebSocket protocol's own error for it; smaller ones are served."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from offline.ws_gateway import MAX_FRAME_BYTES
from tests.integration.test_ws_gateway import TIMEOUT_S, echo  # noqa: F401 - the fixture

assert MAX_FRAME_BYTES == 128 * 1024  # API Gateway's limit on one WebSocket message


def test_a_message_over_128_kb_closes_the_connection_with_1009(echo: Any) -> None:  # noqa: F811
    app, ws, _ = echo
    with connect(ws.url, max_size=None) as conn:
        conn.send("x" * (100 * 1024))
        assert len(conn.recv(timeout=TIMEOUT_S)) == len("echo:") + 100 * 1024
        conn.send("x" * (MAX_FRAME_BYTES + 1))
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert app.next_event("$default")["body"] == "x" * (100 * 1024)
