"""A key revoked while its WebSocket connection is open stops working on that connection within
the bound REST has (``auth_cache_ttl_s``), not the connection's life (issue 16, item 1).

The WebSocket routes as ``app.py`` wires them, behind the local WebSocket API, on the moto
server; the API key authenticator's clock is the test's, so the 60 s bound is crossed without
waiting for it.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.app import Chalice
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.errors import AuthenticationError
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.keys import hash_key
from offline.api_server import ApiServer
from offline.stack import free_port
from offline.ws_gateway import Connections, WsGateway
from tests.integration.test_ws_fuzz import websocket_app

WS_STAGE = "api"
TIMEOUT_S = 10.0
CACHE_TTL_S = 60.0
BODY = {"model": "first/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    def __init__(self, services: Services, ws: WsGateway, outcomes: queue.Queue[Any]) -> None:
        self.services = services
        self.ws = ws
        self.outcomes = outcomes

    def message(self, conn: ClientConnection, ref: str) -> tuple[str | None, dict[str, Any]]:
        """Send a request: (its request id, or None and the error frame that refused it)."""
        conn.send(json.dumps({"action": "chat.completions", "id": ref, "body": BODY}))
        kind, value = self.outcomes.get(timeout=TIMEOUT_S)
        assert kind == "returned", value
        if value is not None:
            return str(value), {}
        return None, json.loads(conn.recv(timeout=TIMEOUT_S))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(stage: str, clock: Clock) -> Iterator[Gateway]:
    outcomes: queue.Queue[Any] = queue.Queue()
    connections = Connections()
    management = Chalice(app_name="ws-revoke-management")  # serves the management API only
    server = ApiServer(management, "127.0.0.1", free_port(), connections=connections)
    name = f"first-{stage}-ws-revoke"
    boto3.Session(region_name="us-east-1").client("sqs").create_queue(QueueName=name)
    services = Services(
        Settings(
            stage=stage,
            interactive_queue=name,  # nobody consumes it
            stream_key="ws-revoke-stream-key",
            stream_relay_url="http://127.0.0.1:9/relay/push",
            websocket_management_url=f"{server.url}/{WS_STAGE}",
            registry_path=str(REPO_ROOT / "infra" / "deployments" / "local.json"),
            stream_max_per_user=1_000_000,
        )
    )
    # The API's own authenticator (REST and WebSocket share it), on the test's clock.
    services.api_key_authenticator = ApiKeyAuthenticator(
        services.keys, cache_ttl_s=CACHE_TTL_S, clock=clock
    )
    ws = WsGateway(
        websocket_app(services, outcomes), "127.0.0.1", free_port(), connections=connections
    )
    for serve in (server.serve_forever, ws.serve_forever):
        threading.Thread(target=serve, daemon=True).start()
    yield Gateway(services, ws, outcomes)
    ws.shutdown()
    server.shutdown()
    server.server_close()


def open_connection(g: Gateway, key: str) -> ClientConnection:
    conn = connect(g.ws.url, additional_headers={"Authorization": f"Bearer {key}"})
    assert g.outcomes.get(timeout=TIMEOUT_S)[0] == "connected"
    return conn


def test_a_key_revoked_during_a_connection_is_refused_there_within_the_rest_bound(
    gateway: Gateway, clock: Clock
) -> None:
    # $connect stored the identity, and each message trusted the stored copy for the
    # connection's whole life (up to 2 h) while REST refused the key after 60 s.
    g = gateway
    key = g.services.keys.create("ws-revoked-user")
    with open_connection(g, key) as conn:
        request_id, _ = g.message(conn, "before")
        assert request_id is not None
        g.services.keys.revoke(hash_key(key))
        clock.now += CACHE_TTL_S - 1  # still inside the cache's bound, as on REST
        assert g.services.authenticator.authenticate(key).id == "ws-revoked-user"
        assert g.message(conn, "cached")[0] is not None
        clock.now += 2  # past it: REST refuses the key, and so does the open connection
        with pytest.raises(AuthenticationError):
            g.services.authenticator.authenticate(key)
        request_id, frame = g.message(conn, "after")
        assert request_id is None
        assert (frame["type"], frame["id"], frame["status"]) == ("error", "after", 401)
        assert frame["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):  # then the connection is closed
            conn.recv(timeout=TIMEOUT_S)


def test_a_connection_record_whose_credential_was_tampered_with_is_refused(
    gateway: Gateway,
) -> None:
    g = gateway
    mine = g.services.keys.create("ws-tamper-a")
    theirs = g.services.keys.create("ws-tamper-b")
    table = g.services.dynamodb.Table(g.services.settings.connections_table_name)
    with open_connection(g, mine) as a, open_connection(g, theirs) as b:
        items = {i["owner"]: i for i in table.scan(ConsistentRead=True)["Items"]}
        sealed_a, sealed_b = items["ws-tamper-a"], items["ws-tamper-b"]
        assert mine not in json.dumps(sealed_a, default=str)  # no usable secret in the record
        # B's sealed credential moved onto A's record does not open there.
        table.update_item(
            Key={"connection_id": sealed_a["connection_id"]},
            UpdateExpression="SET credential = :c",
            ExpressionAttributeValues={":c": sealed_b["credential"]},
        )
        request_id, frame = g.message(a, "moved")
        assert request_id is None and frame["status"] == 401
        assert g.message(b, "intact")[0] is not None
