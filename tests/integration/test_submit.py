"""The one submission path (``Gateway.submit``): the WebSocket route's requests go through it
with a ``StreamTarget``, a route's dialect is kept on the record, and a request that cannot be
queued fails with the error tree's 503 and gives its counters back. On the moto server, without
a poller: each request stays where the API leaves it."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from chalicelib import limits
from chalicelib.auth import Principal
from chalicelib.errors import UpstreamUnavailableError
from chalicelib.gateway import Gateway, StreamTarget
from chalicelib.protocol import parse_body
from chalicelib.protocol.messages_stream import MESSAGES, MessagesAsChat
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.queue import RequestQueue
from chalicelib.streaming.service import StreamService

BODY = {"model": "first/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


class RecordingPoster:
    """Stands in for the WebSocket management API: the frames each connection was sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []

    def post(self, connection_id: str, text: str) -> None:
        self.frames.append((connection_id, json.loads(text)))


def services_for(stage: str) -> Services:
    queue = f"first-{stage}-submit-{uuid.uuid4().hex[:6]}"
    boto3.Session(region_name="us-east-1").client("sqs").create_queue(QueueName=queue)
    return Services(
        Settings(
            stage=stage,
            interactive_queue=queue,  # nobody consumes it
            stream_key="submit-test-key",
            stream_max_per_user=1,
            registry_path=str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        )
    )


def stream_service(services: Services, gateway: Gateway) -> tuple[StreamService, RecordingPoster]:
    poster = RecordingPoster()
    service = StreamService(
        settings=services.settings,
        authenticator=services.authenticator,
        connections=services.connections,
        poster=poster,  # type: ignore[arg-type]
        gateway=gateway,
        registry=services.registry,
        logger=Logger(service="test"),
        limit_store=services.limit_store,
    )
    return service, poster


def received(services: Services) -> list[dict[str, Any]]:
    queue = services.interactive_queue
    return [json.loads(m["Body"]) for m in queue.receive(10, 1, 30)]


def test_a_streamed_request_is_submitted_by_the_gateway_with_its_target_and_dialect(
    stage: str,
) -> None:
    services = services_for(stage)
    user = f"user-{uuid.uuid4().hex[:6]}"
    principal = Principal(id=user, username=user)
    # An Anthropic Messages body, as the WebSocket's `messages` action parses it: its dialect
    # (name and first state) rides the record's stream, for the relay and the poller.
    body = {**BODY, "max_tokens": 8}
    req = parse_body(json.dumps(body).encode(), MessagesAsChat)
    request_id = services.gateway.submit(
        principal, "chat_completions", req, stream=StreamTarget("conn-1", "ref-1")
    )
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "queued"
    stream = record["stream"]
    assert {k: stream[k] for k in ("connection_id", "ref")} == {
        "connection_id": "conn-1",
        "ref": "ref-1",
    }
    assert stream["dialect"] == MESSAGES.name and isinstance(stream["state"], dict)
    assert "reply_to" not in record  # no reply listener waits for a stream
    # The record is written before the message, which names it only.
    assert received(services) == [{"request_id": request_id}]


def test_the_websocket_route_submits_through_the_gateway(stage: str) -> None:
    services = services_for(stage)
    service, _ = stream_service(services, services.gateway)
    user = f"streamer-{uuid.uuid4().hex[:6]}"
    key = services.keys.create(user)
    assert service.connect("conn-9", {"headers": {"Authorization": f"Bearer {key}"}}) == {
        "statusCode": 200
    }
    frame = {"action": "chat.completions", "id": "c1", "body": BODY}
    request_id = service.message("conn-9", json.dumps(frame))
    assert request_id is not None
    record = services.requests.get(request_id)
    assert record is not None and record["stream"] == {"connection_id": "conn-9", "ref": "c1"}
    assert "dialect" not in record
    assert "route" not in record  # chat: its route is its function
    # A dialect's action: run as chat, counted under its own route (usage, metrics). Another
    # user's connection: the first stream holds its user's stream slot.
    other = services.keys.create(f"streamer-{uuid.uuid4().hex[:6]}")
    assert service.connect("conn-10", {"headers": {"Authorization": f"Bearer {other}"}}) == {
        "statusCode": 200
    }
    frame = {"action": "messages", "id": "m1", "body": {**BODY, "max_tokens": 8}}
    request_id = service.message("conn-10", json.dumps(frame))
    assert request_id is not None
    record = services.requests.get(request_id)
    assert record is not None
    assert (record["function"], record["route"]) == ("chat_completions", "messages")


def test_a_stream_that_cannot_be_queued_fails_with_the_trees_503_and_frees_its_slot(
    stage: str,
) -> None:
    services = services_for(stage)
    missing = f"{services.interactive_queue.url}-missing-{uuid.uuid4().hex[:6]}"
    gateway = Gateway(
        settings=services.settings,
        registry=services.registry,
        requests=services.requests,
        queue=RequestQueue(services.sqs, missing),
        blobs=services.blobs,
        replies=services.reply_listener,
        limit_store=services.limit_store,
    )
    service, poster = stream_service(services, gateway)
    user = f"streamer-{uuid.uuid4().hex[:6]}"
    key = services.keys.create(user)
    assert service.connect("conn-q", {"headers": {"Authorization": f"Bearer {key}"}}) == {
        "statusCode": 200
    }
    frame = {"action": "chat.completions", "id": "q1", "body": BODY}
    assert service.message("conn-q", json.dumps(frame)) is None
    (_, refusal) = poster.frames[-1]
    assert refusal["status"] == 503 and refusal["error"]["code"] == "unavailable"
    request_id = refusal["request_id"]
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "failed"
    expected = UpstreamUnavailableError("The request could not be queued.").to_record()
    assert {"error": record["error"], "status_code": record["status_code"]} == expected
    # Its stream slot (stream_max_per_user = 1) was given back: the user may take it again.
    plan = limits.stream_slot(user, 1, time.time(), services.settings.limits_inflight_ttl_s)
    assert services.limit_store.admit(plan).refused is None
