"""Requests and results over Globus Compute's size limits, end to end through the local stack.

The service refuses a submission over 5 MB and a result over 512 KB; the API takes bodies up to
6 MiB and 2,048 embedding inputs (all-MiniLM-L6-v2 answers those with ~9.6 MB). With the S3
path on (the default), both travel by presigned URL and succeed. With it off, the same calls
fail as the service would fail them, named: the submission by the poller's executor before it
is sent (413 ``request_too_large``), the result by the endpoint (500 ``result_too_large``).

These calls take the engine seconds on two CPU cores (5.5 MB to tokenize, 2,048 rows to embed),
and longer on a loaded machine: a call that outlasts the API's wait (504, naming the request)
is collected by its id, as a client would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from offline.stack import StackConfig
from tests.e2e.conftest import TINY, write_registry

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# 5.5 MB of prompt that costs the tiny model as few tokens as "hello world": its WordPiece
# tokenizer drops whitespace, so the body is large on the wire and small in the context window.
PADDED = "hello" + " " * 5_500_000 + "world"
# Short inputs: the size is in the vectors (2,048 x 384 floats as JSON), not in the compute.
INPUTS = [f"item {i}" for i in range(2048)]
COLLECT_S = 300.0


def outcome(stack: BackgroundStack, call: Callable[[], Any]) -> tuple[int, dict[str, Any], str]:
    """``call``'s HTTP status, body (a raw response) and request id; past the API's wait, the
    request's own by its id: the result's, or the error it failed with."""
    try:
        raw = call()
        return raw.http_response.status_code, raw.http_response.json(), raw.headers["x-request-id"]
    except openai.APIStatusError as exc:
        request_id = exc.response.headers["x-request-id"]
        if exc.status_code != 504:
            return exc.status_code, exc.response.json(), request_id
    url = f"{stack.config.api_url}/v1/requests/{request_id}"
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    deadline = time.monotonic() + COLLECT_S
    while time.monotonic() < deadline:
        view = requests.get(url, headers=headers, timeout=60).json()
        if view["status"] == "completed":
            return 200, view["result"], request_id
        if view["status"] == "failed":
            return int(view["status_code"]), {"error": view["error"]}, request_id
        time.sleep(0.5)
    pytest.fail(f"{request_id} did not finish in {COLLECT_S:g} s")


def chat(client: OpenAI, content: str) -> Callable[[], Any]:
    return lambda: client.chat.completions.with_raw_response.create(
        model=TINY, messages=[{"role": "user", "content": content}], max_tokens=2
    )


def embed(client: OpenAI) -> Callable[[], Any]:
    return lambda: client.embeddings.with_raw_response.create(
        model=MINILM, input=INPUTS, encoding_format="float"
    )


def test_the_api_admits_a_5_5_mb_prompt() -> None:
    body = {"model": TINY, "messages": [{"role": "user", "content": PADDED}]}
    size = len(json.dumps(body).encode())
    assert 5_500_000 < size <= 6 * 1024 * 1024  # Settings.max_body_bytes


def test_a_chat_with_a_5_5_mb_prompt_succeeds(client: OpenAI, stack: BackgroundStack) -> None:
    _, short, _ = outcome(stack, chat(client, "hello world"))
    status, out, _ = outcome(stack, chat(client, PADDED))
    assert status == 200 and out["choices"][0]["message"]["role"] == "assistant"
    # The whole body reached the engine: its last word counted as in the short prompt.
    assert out["usage"]["prompt_tokens"] == short["usage"]["prompt_tokens"]


def test_2048_embeddings_succeed_with_a_result_over_9_mb(
    client: OpenAI, stack: BackgroundStack, services: Services
) -> None:
    status, out, request_id = outcome(stack, embed(client))
    assert status == 200 and len(json.dumps(out, separators=(",", ":"))) > 9_000_000
    assert [d["index"] for d in out["data"]] == list(range(2048))
    assert all(len(d["embedding"]) == 384 for d in out["data"])
    # The result left the node by its presigned PUT, not inside the task.
    listed = services.s3.list_objects_v2(
        Bucket=services.settings.bucket_name, Prefix=f"requests/{request_id}/task-result-"
    )
    assert [o["Size"] > 9_000_000 for o in listed.get("Contents", [])] == [True]


@pytest.fixture(scope="module")
def inline_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundStack]:
    """A second stack with the S3 path off: everything inside the task, as before."""
    home = tmp_path_factory.mktemp("first-home-inline")
    registry = write_registry(tmp_path_factory.mktemp("registry-inline") / "local.json")
    config = StackConfig.on_free_ports(
        home,
        compute_workers=1,
        extra_env={
            "FIRST_REGISTRY_PATH": str(registry),
            "FIRST_WAIT_TIMEOUT_S": "20",
            "FIRST_COMPUTE_OFFLOAD": "false",
        },
    )
    stack = BackgroundStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def inline_client(inline_stack: BackgroundStack) -> Iterator[OpenAI]:
    api = f"{inline_stack.config.api_url}/v1"
    with OpenAI(base_url=api, api_key=inline_stack.api_key, max_retries=0) as client:
        yield client


def test_without_s3_a_5_5_mb_prompt_is_refused_as_the_service_would(
    inline_client: OpenAI, inline_stack: BackgroundStack
) -> None:
    status, body, _ = outcome(inline_stack, chat(inline_client, PADDED))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert "submission limit of 5000000 bytes" in body["error"]["message"]


def test_without_s3_2048_embeddings_fail_as_the_service_would(
    inline_client: OpenAI, inline_stack: BackgroundStack
) -> None:
    status, body, _ = outcome(inline_stack, embed(inline_client))
    assert status == 500 and body["error"]["code"] == "result_too_large"
    assert "result limit of 512000 bytes" in body["error"]["message"]
