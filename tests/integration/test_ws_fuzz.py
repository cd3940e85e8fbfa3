"""Property-based fuzz of the WebSocket ``$default`` messages (hypothesis).

Random text, malformed and deeply nested JSON, wrong types, huge ids, unknown actions and
half-valid OpenAI bodies go through a real WebSocket connection (text frames: a binary one closes
the connection, as on AWS; ``test_ws_gateway``), the local WebSocket API and the
gateway's ``StreamService`` (moto server behind it). Every message either is queued or is
answered by exactly one OpenAI-shaped ``{"type": "error", ...}`` frame (4xx) carrying the
client's id when it gave a usable one; the handler never raises; the one connection serves every
example and still queues a valid request at the end.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from chalice.app import Chalice, WebsocketEvent
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from chalicelib.errors import BadRequestError
from chalicelib.protocol.common import load_json
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.streaming.service import MAX_CLIENT_REF_CHARS
from offline.api_server import ApiServer
from offline.stack import free_port
from offline.ws_gateway import Connections, WsGateway

WS_STAGE = "api"
TIMEOUT_S = 10.0
MODEL = "first/tiny-chat"
ERROR_FRAME_KEYS = {"type", "id", "request_id", "error", "status"}


@dataclass
class Socket:
    conn: ClientConnection
    outcomes: queue.Queue[tuple[str, Any]]
    services: Services
    connection_id: str
    settings: dict[str, Any]  # the arguments of the service's Settings


def websocket_app(api: Services, outcomes: queue.Queue[tuple[str, Any]]) -> Chalice:
    """The WebSocket routes as ``app.py`` wires them; each message's outcome is recorded."""
    app = Chalice(app_name="ws-fuzz")
    app.experimental_feature_flags.update({"WEBSOCKETS"})
    app.websocket_api.session = boto3.Session(region_name="us-east-1")

    @app.on_ws_connect()
    def ws_connect(event: WebsocketEvent) -> dict[str, Any]:
        outcomes.put(("connected", event.connection_id))
        return api.streams.connect(event.connection_id, event.to_dict())

    @app.on_ws_message()
    def ws_message(event: WebsocketEvent) -> None:
        try:
            outcomes.put(("returned", api.streams.message(event.connection_id, event.body)))
        except BaseException as exc:
            outcomes.put(("raised", repr(exc)))
            raise

    @app.on_ws_disconnect()
    def ws_disconnect(event: WebsocketEvent) -> None:
        api.streams.disconnect(event.connection_id)

    return app


@pytest.fixture(scope="module")
def socket(stage: str) -> Iterator[Socket]:
    outcomes: queue.Queue[tuple[str, Any]] = queue.Queue()
    connections = Connections()
    server_app = Chalice(app_name="ws-fuzz-management")  # serves only the management API
    server = ApiServer(server_app, "127.0.0.1", free_port(), connections=connections)
    # Queued fuzz requests go to a queue of their own: no other test's poller meets them.
    sqs = boto3.Session(region_name="us-east-1").client("sqs")
    fuzz_queue = f"first-{stage}-ws-fuzz"
    sqs.create_queue(QueueName=fuzz_queue)
    settings: dict[str, Any] = {
        "stage": stage,
        "interactive_queue": fuzz_queue,
        "stream_key": "ws-fuzz-stream-key",
        "stream_relay_url": "http://127.0.0.1:9/relay/push",
        "websocket_management_url": f"{server.url}/{WS_STAGE}",
        "registry_path": str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        # No poller finishes the fuzz's queued requests: their streams stay counted in flight.
        "stream_max_per_user": 1_000_000,
    }
    api = Services(Settings(**settings))
    ws = WsGateway(
        websocket_app(api, outcomes),
        "127.0.0.1",
        free_port(),
        stage=WS_STAGE,
        connections=connections,
    )
    for serve in (server.serve_forever, ws.serve_forever):
        threading.Thread(target=serve, daemon=True).start()
    key = api.keys.create("ws-fuzz-user")
    with connect(f"{ws.url}/?token={key}", open_timeout=TIMEOUT_S) as conn:
        kind, connection_id = outcomes.get(timeout=TIMEOUT_S)
        assert kind == "connected"
        yield Socket(conn, outcomes, api, connection_id, settings)
    ws.shutdown()
    server.shutdown()
    server.server_close()


def exchange(s: Socket, message: str) -> tuple[str | None, dict[str, Any] | None]:
    """Send one message: (the request id it was queued as, or the error frame it got)."""
    s.conn.send(message)
    kind, value = s.outcomes.get(timeout=TIMEOUT_S)
    assert kind == "returned", f"the handler raised {value}"
    if value is not None:
        return str(value), None
    return None, json.loads(s.conn.recv(timeout=TIMEOUT_S))


def usable_ref(frame: Any) -> str | None:
    """The id an error frame must echo: the client's, when it is a short string."""
    if isinstance(frame, dict):
        ref = frame.get("id")
        if isinstance(ref, str) and len(ref) <= MAX_CLIENT_REF_CHARS:
            return ref
    return None


def assert_openai_error_frame(frame: dict[str, Any]) -> None:
    assert set(frame) == ERROR_FRAME_KEYS
    assert frame["type"] == "error"
    error = frame["error"]
    assert (
        {"message", "type", "param", "code"}
        <= set(error)
        <= {
            "message",
            "type",
            "param",
            "code",
            "request_id",
        }
    )
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert 400 <= frame["status"] < 500, frame


# -- strategies -------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
message_item = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | json_leaf},
    optional={"content": st.text(max_size=40) | json_value, "name": json_leaf},
)
openai_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([MODEL, "first/nope", ""]) | json_leaf,
        "messages": st.lists(message_item, max_size=3) | json_value,
        "prompt": st.text(max_size=40) | st.lists(st.integers(-5, 2**40), max_size=4) | json_value,
        "max_tokens": st.integers(min_value=-(2**65), max_value=2**65) | json_leaf,
        "n": st.integers(-3, 40) | json_leaf,
        "temperature": st.floats(allow_nan=True) | json_leaf,
        "stop": st.lists(st.text(max_size=300), max_size=6) | json_leaf,
        "stream": json_leaf,
        "logit_bias": st.dictionaries(st.text(max_size=12), st.floats(), max_size=3) | json_leaf,
        "seed": st.integers(min_value=-(2**70), max_value=2**70),
    },
)
frame_dict = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["chat.completions", "completions", "embeddings", ""])
        | json_leaf,
        "id": st.text(max_size=200) | st.integers(min_value=-(2**80), max_value=2**80) | json_value,
        "body": openai_body | json_value,
    },
)
# A valid request with some fields replaced: reaches the model checks, ceilings and the queue.
VALID_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
near_valid = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["chat.completions", "completions"]),
        "id": st.text(max_size=24),
        "body": st.builds(lambda over: {**VALID_CHAT, "prompt": "hi", **over}, openai_body),
    }
)
messages = st.one_of(
    near_valid.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=200),
    json_value.map(lambda v: json.dumps(v, allow_nan=True)),
    frame_dict.map(lambda v: json.dumps(v, allow_nan=True)),
    frame_dict.map(lambda v: json.dumps(v, allow_nan=True, ensure_ascii=False)),
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the suite is reproducible; bench runs explore further
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(message=messages)
@example(message="[" * 60_000)  # nesting that makes json.loads recurse past its limit
@example(message='{"action": "chat.completions", "id": "deep", "body": ' + "[" * 60_000)
@example(message=json.dumps({"action": "chat.completions", "id": 10**4000, "body": {}}))
@example(message='{"action": "chat.completions", "id": "nan", "body": {"model": NaN}}')
@example(message='{"action": "chat.completions", "id": "\\ud800", "body": {}}')
@example(message='{"action": "completions", "id": "x", "body": {"model": "' + MODEL + '"}}')
@example(message="")
def test_every_fuzzed_message_is_queued_or_answered_by_one_openai_error_frame(
    socket: Socket, message: str
) -> None:
    request_id, frame = exchange(socket, message)
    if request_id is not None:
        event("queued")  # a valid request: its frames would come from the poller
        return
    assert frame is not None
    event(f"error {frame['status']} {frame['error']['code']}")
    assert_openai_error_frame(frame)
    # The id is echoed whenever the message parses as the REST body would (load_json, tested on
    # its own in test_bad_input): with it the client can tell which of its requests failed.
    raw = message.encode("utf-8", "surrogatepass")
    try:
        sent = load_json(raw)
    except BadRequestError:
        sent = None
    assert frame["id"] == usable_ref(sent), (frame, message)


def test_the_connection_still_queues_a_valid_request_after_the_fuzz(socket: Socket) -> None:
    # Run after the fuzz in this module (pytest keeps file order): the same connection.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    message = json.dumps({"action": "chat.completions", "id": "after-fuzz", "body": body})
    request_id, frame = exchange(socket, message)
    assert frame is None and request_id is not None
    record = socket.services.requests.get(request_id)
    assert record is not None
    assert record["stream"] == {"connection_id": socket.connection_id, "ref": "after-fuzz"}


# -- regressions the fuzz found ----------------------------------------------------------------


def test_a_message_nested_past_the_parser_s_limit_is_a_400_frame_not_a_crash(
    socket: Socket,
) -> None:
    # json.loads raised RecursionError (not ValueError): the handler died and no frame came.
    _, frame = exchange(socket, '{"id": "deep", "body": ' + "[" * 60_000)
    assert frame is not None
    assert_openai_error_frame(frame)
    assert "nests deeper" in frame["error"]["message"]


def test_a_refusal_of_the_body_still_carries_the_client_s_id(socket: Socket) -> None:
    # The id was dropped for any refusal raised while the frame was being checked.
    _, frame = exchange(socket, json.dumps({"action": "chat.completions", "id": "r1", "body": 3}))
    assert frame is not None
    assert (frame["id"], frame["error"]["param"], frame["status"]) == ("r1", "body", 400)


def test_a_store_failing_answers_an_openai_500_frame_and_the_connection_goes_on(
    socket: Socket,
) -> None:
    # A failure outside the error tree (here the requests table is missing) was an exception
    # in the handler and silence on the socket; now a server_error frame names the client's id.
    broken = Services(Settings(**{**socket.settings, "requests_table": "no-such-table"}))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    message = json.dumps({"action": "chat.completions", "id": "s1", "body": body})
    assert broken.streams.message(socket.connection_id, message) is None
    frame = json.loads(socket.conn.recv(timeout=TIMEOUT_S))
    assert (frame["type"], frame["id"], frame["status"]) == ("error", "s1", 500)
    assert frame["error"]["type"] == "server_error"
    assert "no-such-table" not in frame["error"]["message"]
    request_id, frame = exchange(socket, message)  # the real service, same connection
    assert request_id is not None and frame is None
