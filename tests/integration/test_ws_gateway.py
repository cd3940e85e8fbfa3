"""The local WebSocket API emulation: API Gateway's events into a Chalice app's handlers, and the
management API a real boto3 ``apigatewaymanagementapi`` client posts through.

A small Chalice app of its own records the events it receives and answers each message by
posting back through the management API (as the gateway's handlers do), so the emulation is
checked without AWS behind it.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.app import Chalice, WebsocketEvent
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from chalicelib.stores.websocket import (
    MAX_FRAME_BYTES,
    ConnectionGoneError,
    ConnectionPoster,
    FrameTooLargeError,
)
from offline.api_server import ApiServer
from offline.stack import free_port
from offline.ws_gateway import Connections, WsGateway

TIMEOUT_S = 20.0


class EchoApp:
    def __init__(self) -> None:
        self.app = Chalice(app_name="ws-echo")
        self.app.experimental_feature_flags.update({"WEBSOCKETS"})
        # Chalice's handler wrapper wants a region, as Lambda's environment gives it.
        self.app.websocket_api.session = boto3.Session(region_name="us-east-1")
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.poster: ConnectionPoster | None = None

        @self.app.on_ws_connect()
        def on_connect(event: WebsocketEvent) -> dict[str, Any]:
            raw = event.to_dict()
            self.events.put(raw)
            if (raw.get("headers") or {}).get("Authorization") == "Bearer no":
                return {"statusCode": 401, "body": json.dumps({"error": {"code": "no"}})}
            return {"statusCode": 200}

        @self.app.on_ws_message()
        def on_message(event: WebsocketEvent) -> None:
            self.events.put(event.to_dict())
            assert self.poster is not None
            self.poster.post(event.connection_id, f"echo:{event.body}")

        @self.app.on_ws_disconnect()
        def on_disconnect(event: WebsocketEvent) -> None:
            self.events.put(event.to_dict())

    def next_event(self, route_key: str) -> dict[str, Any]:
        while True:
            event = self.events.get(timeout=TIMEOUT_S)
            if event["requestContext"]["routeKey"] == route_key:
                return event


@pytest.fixture
def echo() -> Iterator[tuple[EchoApp, WsGateway, ConnectionPoster]]:
    echo = EchoApp()
    connections = Connections()
    api = ApiServer(echo.app, "127.0.0.1", free_port(), connections=connections)
    ws = WsGateway(echo.app, "127.0.0.1", free_port(), connections=connections)
    for target in (api.serve_forever, ws.serve_forever):
        threading.Thread(target=target, daemon=True).start()
    client = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("apigatewaymanagementapi", endpoint_url=api.url)
    echo.poster = ConnectionPoster(client)
    yield echo, ws, echo.poster
    ws.shutdown()
    api.shutdown()
    api.server_close()


def test_connect_message_disconnect_become_api_gateway_events(echo: Any) -> None:
    app, ws, _ = echo
    with connect(f"{ws.url}/?token=abc", additional_headers={"X-Test": "1"}) as conn:
        connected = app.next_event("$connect")
        context = connected["requestContext"]
        assert context["eventType"] == "CONNECT" and context["connectionId"]
        assert connected["queryStringParameters"] == {"token": "abc"}
        assert connected["headers"]["X-Test"] == "1"
        conn.send("hello")
        assert conn.recv(timeout=TIMEOUT_S) == "echo:hello"
        message = app.next_event("$default")
        assert message["body"] == "hello"
        assert message["requestContext"]["connectionId"] == context["connectionId"]
    gone = app.next_event("$disconnect")
    assert gone["requestContext"]["connectionId"] == context["connectionId"]


def test_a_refused_connect_is_an_http_error_with_the_handler_s_status(echo: Any) -> None:
    _, ws, _ = echo
    with pytest.raises(InvalidStatus) as caught:
        connect(ws.url, additional_headers={"Authorization": "Bearer no"})
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body)["error"]["code"] == "no"


def test_management_api_posts_describes_and_closes_and_a_closed_one_is_gone(echo: Any) -> None:
    app, ws, poster = echo
    with connect(ws.url) as conn:
        connection_id = app.next_event("$connect")["requestContext"]["connectionId"]
        poster.post(connection_id, "pushed")
        assert conn.recv(timeout=TIMEOUT_S) == "pushed"
        info = poster._client.get_connection(ConnectionId=connection_id)
        assert info["Identity"]["SourceIp"] == "127.0.0.1"
        poster.close(connection_id)
        app.next_event("$disconnect")
    with pytest.raises(ConnectionGoneError):
        poster.post(connection_id, "too late")
    with pytest.raises(ConnectionGoneError):
        poster.post("never-was", "x")


def test_a_binary_message_closes_the_connection_with_1003_as_api_gateway_does(
    echo: Any,
) -> None:
    # API Gateway's WebSocket API serves text frames only; the emulation served binary ones, so
    # a client that worked locally broke on AWS.
    app, ws, _ = echo
    with connect(ws.url) as conn:
        connection_id = app.next_event("$connect")["requestContext"]["connectionId"]
        conn.send(b'{"action": "chat.completions"}')
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
    gone = app.next_event("$disconnect")  # no $default came before it
    assert gone["requestContext"]["connectionId"] == connection_id


def test_a_post_over_128_kb_is_refused_whole_as_api_gateway_refuses_it(echo: Any) -> None:
    # API Gateway answers PayloadTooLargeException (413) to a frame over 128 KB; the adapter
    # translates it where it enters, and the client receives nothing of it.
    app, ws, poster = echo
    with connect(ws.url, max_size=None) as conn:
        connection_id = app.next_event("$connect")["requestContext"]["connectionId"]
        with pytest.raises(FrameTooLargeError):
            poster.post(connection_id, "x" * (MAX_FRAME_BYTES + 1))
        poster.post(connection_id, "x" * MAX_FRAME_BYTES)  # the limit itself is delivered
        assert conn.recv(timeout=TIMEOUT_S) == "x" * MAX_FRAME_BYTES
