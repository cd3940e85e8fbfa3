"""A real moto server (ours, with its call counter) on a free port, resources deployed once.

Each test's ``services`` is built on a boto3 session of its own, and ``aws_calls`` counts the
calls that session sends: a test counts its own calls, not those of a thread another test left
running (the server's ``/_first/calls`` counts every client, and is for bench/'s whole-stack
figures).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chalicelib.services import Services
from chalicelib.settings import Settings
from offline.aws_server import build_server
from offline.resources import deploy
from offline.stack import free_port
from tests.aws_calls import CallCounter


class Moto:
    def __init__(self, url: str) -> None:
        self.url = url

    def calls(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_first/calls") as r:  # noqa: S310
            return json.loads(r.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/_first/calls", method="DELETE")
        urllib.request.urlopen(req).close()  # noqa: S310


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    port = free_port()
    server = build_server("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    # Integration tests start from FIRST's defaults: the e2e suite's session fixtures (which run
    # first) leave the local stack's FIRST_* settings in the environment until the session ends.
    inherited = [k for k in os.environ if k.startswith(("FIRST_", "GLOBUS_COMPUTE_"))]
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            *inherited,
        )
    }
    for k in inherited:
        del os.environ[k]
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield Moto(url)
    server.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def deployed_stage() -> str:
    name = f"it{uuid.uuid4().hex[:6]}"
    session = boto3.Session(region_name="us-east-1")
    deploy(
        session.client("cloudformation"),
        session.client("dynamodb"),
        stage=name,
        parameters={"VisibilityTimeout": "2"},
    )
    return name


@pytest.fixture(scope="session")
def stage(moto_server: Moto) -> str:
    return deployed_stage()


@pytest.fixture
def own_stage(moto_server: Moto) -> str:
    """A stage no other test writes to (under a second to deploy), for a test that reads a
    whole table or queue: the shared ``stage`` holds every earlier test's records."""
    return deployed_stage()


@pytest.fixture
def aws_session(moto_server: Moto) -> boto3.Session:
    """A session of the test's own, its clients sent to the moto server."""
    return boto3.Session(region_name="us-east-1")


@pytest.fixture
def aws_calls(aws_session: boto3.Session) -> CallCounter:
    """The AWS calls ``aws_session`` (and so ``services``) sends, by operation."""
    return CallCounter(aws_session)


@pytest.fixture
def services(stage: str, aws_session: boto3.Session, aws_calls: CallCounter) -> Services:
    # aws_calls first: a client copies its session's event hooks when it is made.
    return Services(
        Settings(stage=stage, poller_visibility_timeout_s=2, wait_timeout_s=5),
        session=aws_session,
    )
