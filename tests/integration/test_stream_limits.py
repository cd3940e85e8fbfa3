"""Concurrent streams per user (``Settings.stream_max_per_user``): the gateway's StreamService on
the moto server, without a poller, so every admitted stream stays in flight until released as the
poller releases it (the record's ``limits`` hold)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.streaming.service import StreamService

LIMIT = 2


class RecordingPoster:
    """Stands in for the WebSocket management API: the frames each connection was sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []

    def post(self, connection_id: str, text: str) -> None:
        self.frames.append((connection_id, json.loads(text)))


def stream_service(stage: str) -> tuple[Services, StreamService, RecordingPoster]:
    queue = f"first-{stage}-stream-limits-{uuid.uuid4().hex[:6]}"
    boto3.Session(region_name="us-east-1").client("sqs").create_queue(QueueName=queue)
    services = Services(
        Settings(
            stage=stage,
            interactive_queue=queue,  # nobody consumes it: admitted streams stay in flight
            stream_key="stream-limits-key",
            stream_max_per_user=LIMIT,
            registry_path=str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        )
    )
    poster = RecordingPoster()
    service = StreamService(
        settings=services.settings,
        authenticator=services.authenticator,
        connections=services.connections,
        poster=poster,  # type: ignore[arg-type]
        gateway=services.gateway,
        registry=services.registry,
        logger=Logger(service="test"),
        limit_store=services.limit_store,
    )
    return services, service, poster


def connect(services: Services, service: StreamService, user: str, connection_id: str) -> None:
    """$connect as API Gateway sends it, with a new key of ``user``."""
    key = services.keys.create(user)
    answer = service.connect(connection_id, {"headers": {"Authorization": f"Bearer {key}"}})
    assert answer == {"statusCode": 200}


def message(ref: str) -> str:
    body = {"model": "first/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"action": "chat.completions", "id": ref, "body": body})


def test_a_user_past_their_concurrent_streams_gets_a_429_frame_until_one_finishes(
    stage: str,
) -> None:
    services, service, poster = stream_service(stage)
    user = f"streamer-{uuid.uuid4().hex[:6]}"
    connect(services, service, user, "conn-1")
    connect(
        services, service, user, "conn-2"
    )  # the limit is the user's, over all their connections
    first = service.message("conn-1", message("a"))
    second = service.message("conn-2", message("b"))
    assert first and second
    assert service.message("conn-1", message("c")) is None
    (conn, frame) = poster.frames[-1]
    assert conn == "conn-1" and frame["type"] == "error" and frame["id"] == "c"
    assert frame["status"] == 429 and frame["error"]["code"] == "rate_limit_exceeded"
    assert f"{LIMIT} in flight" in frame["error"]["message"]

    # Someone else is not counted against this user.
    connect(services, service, "someone-else", "conn-3")
    assert service.message("conn-3", message("d"))

    # The poller finishing a stream gives its slot back (exactly what it releases: the hold).
    record = services.requests.get(first)
    assert record is not None and record["limits"]["streams"].endswith("#streams")
    services.limit_store.release(record["limits"], 0)
    assert service.message("conn-1", message("e"))
    assert service.message("conn-1", message("f")) is None
