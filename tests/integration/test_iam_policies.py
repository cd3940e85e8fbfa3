"""The production IAM policies allow every AWS call the API and the poller make.

Each side runs on its own boto3 session with a ``CallRecorder`` (tests/iam.py), against the moto
server, through the real components: the API's ``Services`` (gateway, reply listener, keys,
limits, blobs with a payload too large to go inline, the Globus auth cache) and a real ``Poller``
whose executor answers in process, plus the poller-side stores on the paths a happy request
does not take (fail, extend, heartbeat, delete). The poller's accounting is wired as in
``chalicelib.poller.main`` (usage records through the background ``UsageWriter``, the queue-depth
gauge); the API then reads them back as ``GET /v1/usage`` and ``GET /v1/dashboard/summary`` do.
A warm-up runs end to end: the poller's probe reports the model cold, the API's ``Fleet.warm``
marks the router's choice and queues ``{warm}``, the poller sends the warm task and clears the
mark. Streaming runs the API's WebSocket routes through
the local WebSocket API emulation (``offline.ws_gateway``: $connect, $default, $disconnect), the
relay posting an HPC node's push and the poller posting ``done``, each through a real
``apigatewaymanagementapi`` client whose endpoint (the local server, under the stage ``api`` as
on AWS) gives the calls their ``execute-api`` ARNs. Every recorded (action, resource), with this
test's stage renamed ``prod``, must be allowed by that side's policy document.

To cover a new call: add a step to ``STEPS`` (a function of the ``World``; either side's
services, or both) or make an existing step reach it, and name its action in
``API_MUST_EXERCISE`` / ``POLLER_MUST_EXERCISE`` so the check cannot pass by the call going
unmade. A new operation whose IAM action is not ``<service>:<Operation>`` goes in
``tests.iam.IAM_ACTIONS``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.app import Chalice, WebsocketEvent
from websockets.sync.client import connect

from chalicelib.auth.cache import IntrospectionCache
from chalicelib.auth.principal import Principal
from chalicelib.compute.executors import ExecutorPool
from chalicelib.consumer.accounting import Accounting
from chalicelib.consumer.leases import Leases
from chalicelib.errors import FirstError
from chalicelib.fleet import require_operator
from chalicelib.logs import get_logger
from chalicelib.metrics import MetricsRecorder
from chalicelib.poller import planning
from chalicelib.poller.board import Health, StatusBoard
from chalicelib.poller.root import start_accounting, stream_notifier
from chalicelib.poller.worker import Poller
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.registry import Endpoint
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.deleter import BatchDeleter
from chalicelib.streaming.notifier import StreamNotifier
from chalicelib.streaming.relay import Relay
from chalicelib.usage_view import usage as usage_summary
from offline.api_server import ApiServer
from offline.stack import free_port
from offline.ws_gateway import Connections, WsGateway
from tests.iam import Call, CallRecorder, allows

API_POLICY = REPO_ROOT / ".chalice" / "policy-prod.json"
POLLER_POLICY = REPO_ROOT / "infra" / "iam" / "poller-policy.json"
MODEL = "first/tiny-chat"
# Big enough to go to S3 both ways (the test's inline limit is 1 KB).
BIG_TEXT = "x" * 4096
# Chalice names the WebSocket API's stage as the REST API's (``api_gateway_stage``).
WS_STAGE = "api"
TIMEOUT_S = 30.0
# The key's group, and the settings' operator group: the operator routes (everyone's usage, the
# dashboard) are part of what the API does.
OPERATORS = "iam-operators"

# (action, resource pattern in prod) each side must have made, or the check proves nothing.
API_MUST_EXERCISE = {
    ("dynamodb:GetItem", "table/first-prod-keys"),
    ("dynamodb:PutItem", "table/first-prod-requests"),
    ("dynamodb:UpdateItem", "table/first-prod-requests"),
    ("dynamodb:Query", "table/first-prod-requests"),
    ("dynamodb:GetItem", "table/first-prod-auth-cache"),
    ("dynamodb:PutItem", "table/first-prod-auth-cache"),
    ("dynamodb:UpdateItem", "table/first-prod-limits"),
    ("dynamodb:Query", "table/first-prod-requests/index/pending"),
    ("dynamodb:GetItem", "table/first-prod-requests"),
    ("dynamodb:Query", "table/first-prod-usage"),
    ("dynamodb:Query", "table/first-prod-usage/index/by-day"),
    ("dynamodb:Scan", "table/first-prod-endpoints"),
    ("dynamodb:UpdateItem", "table/first-prod-endpoints"),
    ("sqs:GetQueueUrl", ":first-prod-interactive"),
    ("sqs:SendMessage", ":first-prod-interactive"),
    ("sqs:GetQueueAttributes", ":first-prod-interactive"),
    ("sqs:CreateQueue", ":first-prod-reply-"),
    ("sqs:TagQueue", ":first-prod-reply-"),
    ("sqs:ReceiveMessage", ":first-prod-reply-"),
    ("sqs:DeleteMessage", ":first-prod-reply-"),
    ("sqs:DeleteQueue", ":first-prod-reply-"),
    ("s3:PutObject", "first-prod-data/requests/"),
    ("s3:GetObject", "first-prod-data/requests/"),
    ("s3:GetObject", "first-prod-data/registry/"),
    ("dynamodb:PutItem", "table/first-prod-connections"),
    ("dynamodb:GetItem", "table/first-prod-connections"),
    ("dynamodb:DeleteItem", "table/first-prod-connections"),
    ("execute-api:ManageConnections", f"/{WS_STAGE}/POST/@connections/"),
    ("execute-api:ManageConnections", f"/{WS_STAGE}/DELETE/@connections/"),
}
POLLER_MUST_EXERCISE = {
    ("sqs:GetQueueUrl", ":first-prod-interactive"),
    ("sqs:ReceiveMessage", ":first-prod-interactive"),
    ("sqs:ChangeMessageVisibility", ":first-prod-interactive"),
    ("sqs:DeleteMessage", ":first-prod-interactive"),
    ("sqs:GetQueueAttributes", ":first-prod-interactive"),
    ("sqs:SendMessage", ":first-prod-reply-"),
    ("dynamodb:UpdateItem", "table/first-prod-requests"),
    ("dynamodb:Scan", "table/first-prod-endpoints"),
    ("dynamodb:UpdateItem", "table/first-prod-endpoints"),
    ("dynamodb:BatchWriteItem", "table/first-prod-usage"),
    ("dynamodb:UpdateItem", "table/first-prod-limits"),
    ("s3:GetObject", "first-prod-data/requests/"),
    ("s3:PutObject", "first-prod-data/requests/"),
    ("s3:GetObject", "first-prod-data/registry/"),
    ("execute-api:ManageConnections", f"/{WS_STAGE}/POST/@connections/"),
}


class AnsweringExecutor(Executor):
    """Stands in for Globus Compute: answers every task at once, with a large response. Its
    tasks have ids, as Globus Compute's do (``Attachable``): the poller keeps each on the
    request's record (``RequestStore.note_task``)."""

    def submit_task(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> tuple[str, Future[Any]]:
        task = (args or [{}])[0]
        return f"task-{task['request_id']}", self.submit_to_registered_function(
            function_id, args, kwargs
        )

    def attach(self, task_id: str) -> Future[Any]:
        raise AssertionError(f"no poller died here: nothing re-attaches to {task_id}")

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        task = (args or [{}])[0]
        future: Future[Any] = Future()
        future.set_result(
            {
                "response": {
                    "id": f"chatcmpl-{task['request_id']}",
                    "object": "chat.completion",
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": BIG_TEXT},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                },
                "engine_time_ms": 1.0,
            }
        )
        return future


class StreamingExecutor(AnsweringExecutor):
    """An HPC function that streams: one push through the API's relay, then the answer."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        task = (args or [{}])[0]
        chunk = {
            "id": f"chatcmpl-{task['request_id']}",
            "object": "chat.completion.chunk",
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        }
        push = json.dumps({"seq": 1, "chunks": [chunk]}).encode()
        assert self._relay.push(task["stream"]["token"], push).posted == 1
        return super().submit_to_registered_function(function_id, args, kwargs)


class ColdModelExecutor(AnsweringExecutor):
    """An endpoint whose probe reports ``MODEL`` cold until its warm task (``local:warm``,
    ``hpc_functions.warm``) has loaded it."""

    def __init__(self) -> None:
        self.state = "cold"
        self.warm_tasks: list[dict[str, Any]] = []

    def probe(self, endpoint: Endpoint) -> Health:
        return Health(True, {MODEL: self.state})

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        if function_id != "local:warm":
            return super().submit_to_registered_function(function_id, args, kwargs)
        self.warm_tasks.append((args or [{}])[0])
        self.state = "hot"
        future: Future[Any] = Future()
        future.set_result({"status": "hot", "model": MODEL})
        return future


@dataclass
class Side:
    services: Services
    recorder: CallRecorder


@dataclass
class World:
    stage: str
    api: Side
    poller: Side
    key: str
    state: dict[str, Any]
    websocket: WsGateway
    disconnected: threading.Event
    # The poller's accounting, shared by every poller the steps start (as one process's is).
    accounting: Accounting
    metric_lines: list[str]

    def principal(self) -> Principal:
        return self.api.services.authenticator.authenticate(self.key)


def request() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": BIG_TEXT}], "max_tokens": 8}
    )


# --- what the API does -------------------------------------------------------------------


def poller_of(
    w: World,
    executor: Executor,
    streams: StreamNotifier | None = None,
    probe: Callable[[Endpoint], Health | bool] = lambda endpoint: True,
) -> Poller:
    ps = w.poller.services
    return Poller(
        settings=ps.settings,
        registry=ps.registry,
        queue=ps.interactive_queue,
        requests=ps.requests,
        blobs=ps.blobs,
        replies=ps.reply_sender,
        executors=ExecutorPool(lambda endpoint: executor),
        logger=get_logger("first-poller-test"),
        endpoints=ps.endpoint_store,
        board=StatusBoard(
            ps.registry,
            ps.endpoint_store,
            get_logger("first-poller-test"),
            probes={"local": probe},
        ),
        limits=ps.limit_store,
        streams=streams,
        accounting=w.accounting,
    )


def api_interactive_request(w: World) -> None:
    """Authenticate, admit, record (payload to S3), enqueue, wait for the notice, fetch by id;
    a real poller answers with a result too large for the record (to S3), and starts its
    accounting as ``chalicelib.poller.main`` does (the gauges sample the queue's depth)."""
    poller = poller_of(w, AnsweringExecutor())
    start_accounting(poller, w.poller.services)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    try:
        principal = w.principal()
        done = w.api.services.gateway.run(principal, "chat_completions", request())
        assert done.response["choices"][0]["message"]["content"] == BIG_TEXT
        view = w.api.services.gateway.fetch(principal, done.request_id)
        assert view["status"] == "completed"
        record = w.api.services.requests.get(done.request_id)
        assert record is not None and record["task"]["id"] == f"task-{done.request_id}"
    finally:
        poller.stopping.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def api_request_the_poller_fails(w: World) -> None:
    """A request a poller fails (see ``poller_fails_a_request``): the API reads the failure."""
    gateway = w.api.services.gateway
    principal = w.principal()
    admission = gateway.admit(principal, request())
    request_id = gateway.submit(principal, "chat_completions", request(), admission.hold)
    w.state["failing"] = (request_id, admission.hold)
    poller_fails_a_request(w)
    with pytest.raises(FirstError):
        gateway.wait(request_id, 10)
    assert gateway.fetch(principal, request_id)["status"] == "failed"


def api_request_that_could_not_be_queued(w: World) -> None:
    """What the gateway does when the enqueue fails: fail the record, give the counters back."""
    api = w.api.services
    request_id = f"req_iam_{w.stage}_unqueued"
    api.requests.create({"request_id": request_id, "owner": "nobody", "model": MODEL})
    api.requests.fail(request_id, {"status_code": 503})
    hold = api.gateway.admit(w.principal(), request()).hold
    assert hold is not None
    api.limit_store.release(hold, 0)


def api_globus_auth_cache(w: World) -> None:
    cache = IntrospectionCache(
        w.api.services.dynamodb.Table(w.api.services.settings.auth_cache_table_name)
    )
    cache.put("0" * 64, {"active": False}, 4102444800)
    assert cache.get("0" * 64) is not None


def api_streams_over_the_websocket(w: World) -> None:
    """$connect records the connection, $default reads it, admits and enqueues; the poller mints
    the capability and posts ``done``, the relay posts the HPC node's push; $disconnect forgets
    the connection. A bad message is refused with an error frame (posted by the API)."""
    streams = stream_notifier(w.poller.services)
    assert streams is not None, "streaming is configured for both sides"
    poller = poller_of(w, StreamingExecutor(w.api.services.relay), streams)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    try:
        headers = {"Authorization": f"Bearer {w.key}"}
        with connect(w.websocket.url, additional_headers=headers) as conn:
            conn.send(json.dumps({"action": "nonsense", "id": "bad", "body": body}))
            assert json.loads(conn.recv(timeout=TIMEOUT_S))["type"] == "error"
            conn.send(json.dumps({"action": "chat.completions", "id": "c1", "body": body}))
            kinds = [json.loads(conn.recv(timeout=TIMEOUT_S))["type"] for _ in range(2)]
            assert kinds == ["chunk", "done"]
    finally:
        poller.stopping.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert w.disconnected.wait(TIMEOUT_S), "$disconnect ran"


def api_closes_a_connection_whose_credential_is_refused(w: World) -> None:
    """A message on a connection whose credential no longer passes (here its record lost it, as
    a revoked key would fail) gets a 401 frame, and the API closes the connection
    (``DELETE @connections``)."""
    w.disconnected.clear()
    headers = {"Authorization": f"Bearer {w.key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    # Outside both sides' recorders: the test's own edit of the record.
    table = (
        boto3.Session(region_name="us-east-1")
        .resource("dynamodb")
        .Table(w.api.services.settings.connections_table_name)
    )
    with connect(w.websocket.url, additional_headers=headers) as conn:
        (item,) = [
            i for i in table.scan(ConsistentRead=True)["Items"] if i["owner"] == "iam-test-user"
        ]
        table.update_item(
            Key={"connection_id": item["connection_id"]}, UpdateExpression="REMOVE credential"
        )
        conn.send(json.dumps({"action": "chat.completions", "id": "c2", "body": body}))
        assert json.loads(conn.recv(timeout=TIMEOUT_S))["status"] == 401
        assert w.disconnected.wait(TIMEOUT_S), "the API closed the connection"


def api_warms_a_cold_model(w: World) -> None:
    """``POST /v1/models/{model}/warm`` on a model every deployment reports cold: the API marks
    the router's choice warming and queues ``{warm}``; the poller marks it too, sends the warm
    task (``chalicelib.poller.warming``) and clears the mark when it returns."""
    executor = ColdModelExecutor()
    poller = poller_of(w, executor, probe=executor.probe)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    api = w.api.services
    try:
        wait_until(lambda: api.fleet.annotate({"id": MODEL})["status"] == "cold", "cold")
        warming = api.gateway.warm(w.principal(), MODEL)
        assert warming.started and warming.status == "starting"
        # The API's mark is there from the start: it is gone once the poller's warm-up returned.
        wait_until(
            lambda: (
                poller.warmer.counts["warms_started"] == 1
                and not any(s.warming for s in api.endpoint_store.statuses().values())
            ),
            "the warm-up and its mark cleared",
        )
        assert [t["engine"]["model"] for t in executor.warm_tasks] == [MODEL]
    finally:
        poller.stopping.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert poller.warmer.counts["warm_errors"] == 0


def api_reads_usage_and_the_dashboard(w: World) -> None:
    """``GET /v1/usage`` (the caller's own: the table; everyone's by user: the by-day index) and
    ``GET /v1/dashboard/summary`` (endpoints, queue counts, the oldest pending request, usage
    records, the failed request's record) over the usage records the pollers wrote."""
    assert w.accounting.usage is not None
    w.accounting.usage.flush()
    api = w.api.services
    principal = w.principal()
    operators = api.settings.operator_groups
    own = usage_summary(api.usage, principal, {}, operators)
    # The interactive, failed and streamed requests of the steps above.
    assert own["totals"]["requests"] >= 3 and own["totals"]["errors"] >= 1
    everyone = usage_summary(api.usage, principal, {"group_by": "user"}, operators)
    assert principal.id in [bucket["user"] for bucket in everyone["data"]]
    require_operator(principal, operators)
    summary = api.dashboard.summary(3600)
    request_id, _ = w.state["failing"]
    failure = next(
        f for f in summary["traffic"]["recent_failures"] if f["request_id"] == request_id
    )
    assert failure["error_code"] is not None  # read from the failed request's record
    assert summary["queue"]["depth"] >= 0


def api_container_goes_away(w: World) -> None:
    """Flush the received notices' deletes and delete the reply queue."""
    w.api.services.reply_listener.close(delete_queue=True)


# --- what the poller does beyond a happy request (run inside the API steps above) ------------


def poller_fails_a_request(w: World) -> None:
    """Receive, back off, heartbeat, claim, fail, notify, release, delete."""
    ps = w.poller.services
    request_id, hold = w.state["failing"]
    queue = ps.interactive_queue
    messages: list[dict[str, Any]] = []
    while not messages:
        messages = queue.receive(10, 1, ps.settings.poller_visibility_timeout_s)
    (message,) = messages
    assert planning.request_id_of(message) == request_id
    receipt = message["ReceiptHandle"]
    queue.extend(receipt, 30)
    leases = Leases(queue, 30, get_logger("first-poller-test"))
    leases.hold(receipt)
    leases.beat()
    leases.close()
    assert leases.counts["heartbeats"] == 1
    # As the poller's claim does: the record the message carries, written claimed.
    record = ps.requests.claim(request_id, slot="local-a", record=planning.record_of(message))
    failure = planning.engine_failure(request_id, "iam test")
    ps.requests.fail(request_id, failure)
    w.accounting.finished(record, "failed", failure)  # as the poller's _finish does
    assert ps.reply_sender.send(record["reply_to"], {"request_id": request_id, "status": "failed"})
    ps.limit_store.release(hold, 0)
    deleter = BatchDeleter(ps.sqs, queue.url, max_delay_s=60)
    deleter.add(receipt)
    deleter.close()
    assert deleter.failures == 0


def poller_process_ends(w: World) -> None:
    """What ``chalicelib.poller.main`` does after its poller stops: the last gauges (the queue's
    depth) and metrics flushed, the usage records still queued written."""
    w.accounting.close()
    assert w.accounting.usage is not None and w.accounting.usage.failures == 0
    assert any('"QueueDepth"' in line for line in w.metric_lines)


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


STEPS: list[Callable[[World], None]] = [
    api_interactive_request,
    api_request_the_poller_fails,
    api_request_that_could_not_be_queued,
    api_globus_auth_cache,
    api_warms_a_cold_model,
    api_streams_over_the_websocket,
    api_closes_a_connection_whose_credential_is_refused,
    api_reads_usage_and_the_dashboard,
    api_container_goes_away,
    poller_process_ends,
]


# --- the check ---------------------------------------------------------------------------


def websocket_app(api: list[Services], disconnected: threading.Event) -> Chalice:
    """The WebSocket routes as ``app.py`` wires them, on the API side's services."""
    app = Chalice(app_name="iam-websocket")
    app.experimental_feature_flags.update({"WEBSOCKETS"})
    # Chalice's handler wrapper wants a region, as Lambda's environment gives it.
    app.websocket_api.session = boto3.Session(region_name="us-east-1")

    @app.on_ws_connect()
    def ws_connect(event: WebsocketEvent) -> dict[str, Any]:
        return api[0].streams.connect(event.connection_id, event.to_dict())

    @app.on_ws_message()
    def ws_message(event: WebsocketEvent) -> None:
        api[0].streams.message(event.connection_id, event.body)

    @app.on_ws_disconnect()
    def ws_disconnect(event: WebsocketEvent) -> None:
        api[0].streams.disconnect(event.connection_id)
        disconnected.set()

    return app


def recording_side(settings: Settings) -> Side:
    session = boto3.Session(region_name="us-east-1")
    recorder = CallRecorder(session)  # before any client is made: clients copy the handlers
    return Side(Services(settings, session=session), recorder)


@pytest.fixture
def world(stage: str, services: Services) -> Iterator[World]:
    bucket = services.settings.bucket_name
    registry_key = f"registry/{stage}.json"
    limits_key = f"registry/limits-{stage}.json"
    registry = (REPO_ROOT / "infra" / "deployments" / "local.json").read_text()
    services.s3.put_object(Bucket=bucket, Key=registry_key, Body=registry.encode())
    limits = {
        "default": {
            "requests_per_minute": 10_000,
            "tokens_per_minute": 10**9,
            "max_concurrent": 50,
        },
        "models": {MODEL: {"tokens_per_minute": 10**9}},
    }
    services.s3.put_object(Bucket=bucket, Key=limits_key, Body=json.dumps(limits).encode())
    # The local WebSocket API and its management API; the app's handlers find the API side's
    # services once they exist.
    api_services: list[Services] = []
    disconnected = threading.Event()
    app = websocket_app(api_services, disconnected)
    connections = Connections()
    server = ApiServer(app, "127.0.0.1", free_port(), connections=connections)
    websocket = WsGateway(app, "127.0.0.1", free_port(), stage=WS_STAGE, connections=connections)
    for serve in (server.serve_forever, websocket.serve_forever):
        threading.Thread(target=serve, daemon=True).start()
    settings = Settings(
        stage=stage,
        stream_key="iam-test-stream-key",
        stream_relay_url="http://127.0.0.1:9/relay/push",  # HPC pushes go in process here
        websocket_management_url=f"{server.url}/{WS_STAGE}",
        registry_path=f"s3://{bucket}/{registry_key}",
        limits_path=f"s3://{bucket}/{limits_key}",
        inline_limit_bytes=1024,
        poller_visibility_timeout_s=2,
        poller_wait_time_s=1,
        wait_timeout_s=10,
        operator_groups=[OPERATORS],
    )
    # Keys are made by operators (`first keys create`), not by either side.
    key = services.keys.create("iam-test-user", groups=[OPERATORS])
    api = recording_side(settings)
    api_services.append(api.services)
    poller = recording_side(settings)
    lines: list[str] = []
    recorder = MetricsRecorder("first-poller", sink=lines.append)
    accounting = Accounting(
        recorder, get_logger("first-poller-test"), poller.services.usage_writer(recorder)
    )
    yield World(stage, api, poller, key, {}, websocket, disconnected, accounting, lines)
    accounting.close()  # a step that failed first leaves it open
    websocket.shutdown()
    server.shutdown()
    server.server_close()


def to_prod(call: Call, stage: str) -> tuple[str, str]:
    return call.action, call.resource.replace(f"first-{stage}-", "first-prod-")


def exercised(calls: list[Call], stage: str) -> set[tuple[str, str]]:
    return {to_prod(c, stage) for c in calls}


def denied(policy_path: Path, calls: set[tuple[str, str]]) -> list[tuple[str, str]]:
    policy = json.loads(policy_path.read_text())
    return sorted((a, r) for a, r in calls if not allows(policy, a, r))


def covers(calls: set[tuple[str, str]], needed: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The needed (action, resource part) pairs no recorded call matches."""
    return {(a, part) for a, part in needed if not any(a == x and part in r for x, r in calls)}


def test_production_policies_allow_every_call_each_side_makes(world: World) -> None:
    for step in STEPS:
        step(world)
    api_calls = exercised(world.api.recorder.calls, world.stage)
    poller_calls = exercised(world.poller.recorder.calls, world.stage)
    assert covers(api_calls, API_MUST_EXERCISE) == set(), "the API no longer makes these"
    assert covers(poller_calls, POLLER_MUST_EXERCISE) == set(), "the poller no longer makes these"
    assert denied(API_POLICY, api_calls) == [], f"{API_POLICY.name} refuses these"
    assert denied(POLLER_POLICY, poller_calls) == [], f"{POLLER_POLICY.name} refuses these"
