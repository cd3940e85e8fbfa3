"""Real pollers over the moto server for integration tests: what each test varies is where tasks
go (``executors``), what the health probes say (``probes``) and whether streams are posted."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from chalicelib.compute.executors import ExecutorPool
from chalicelib.logs import get_logger
from chalicelib.poller.board import Probe, StatusBoard
from chalicelib.poller.worker import Poller
from chalicelib.registry import Endpoint
from chalicelib.services import Services
from chalicelib.settings import Settings
from chalicelib.streaming.notifier import StreamNotifier

StartPoller = Callable[..., Poller]


def poller_services(
    stage: str, registry_path: Path, *, session: boto3.Session | None = None, **settings: Any
) -> Services:
    """Services for a test's pollers: short leases and long polls, and a reply queue of the
    test's own (an earlier test's listener must not take this one's notices); ``session``: one
    whose calls a ``CallCounter`` counts."""
    return Services(
        Settings(
            stage=stage,
            poller_visibility_timeout_s=2,
            poller_wait_time_s=1,
            wait_timeout_s=20,
            registry_path=str(registry_path),
            reply_queue_prefix=f"first-{stage}-reply-{uuid.uuid4().hex[:6]}",
            **settings,
        ),
        session=session,
    )


def forget_endpoints(services: Services) -> None:
    """Each test starts from endpoints nobody has heard of: no failures, no open circuit, and
    none left by another test's registry (the table is the session's)."""
    table = services.settings.endpoints_table_name
    client = services.dynamodb_client
    for page in client.get_paginator("scan").paginate(
        TableName=table, ProjectionExpression="#n", ExpressionAttributeNames={"#n": "name"}
    ):
        for item in page["Items"]:
            client.delete_item(TableName=table, Key={"name": item["name"]})


@contextmanager
def pollers(services: Services) -> Iterator[StartPoller]:
    """``start(executor_for, probes=..., streams=...)`` runs a poller in a thread; every one
    started is stopped on exit."""
    started: list[tuple[Poller, threading.Thread]] = []

    def start(
        executor_for: Callable[[Endpoint], Any],
        *,
        probes: dict[str, Probe] | None = None,
        streams: StreamNotifier | None = None,
    ) -> Poller:
        logger = get_logger("test-poller")
        poller = Poller(
            settings=services.settings,
            registry=services.registry,
            queue=services.interactive_queue,
            requests=services.requests,
            blobs=services.blobs,
            replies=services.reply_sender,
            executors=ExecutorPool(executor_for),
            logger=logger,
            endpoints=services.endpoint_store,
            board=StatusBoard(
                services.registry,
                services.endpoint_store,
                logger,
                probes=probes or {"local": lambda e: True, "globus": lambda e: True},
                policy=services.circuit_policy,
            ),
            streams=streams,
            policy=services.circuit_policy,
        )
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        started.append((poller, thread))
        return poller

    try:
        yield start
    finally:
        for poller, thread in started:
            poller.stopping.set()
            thread.join(30)
