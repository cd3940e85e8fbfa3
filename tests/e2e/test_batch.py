"""Batch through the running stack: the OpenAI SDK's files/batches, and the S3 drop folder."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import boto3
from anthropic.types import Message
from openai import OpenAI
from openai.types.responses import Response

from offline.background import BackgroundStack
from tests.e2e.conftest import TINY

DONE = ("completed", "failed", "cancelled", "expired")


def jsonl(n: int, *, max_tokens: int = 2, prefix: str = "req") -> bytes:
    rows = [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY,
                "messages": [{"role": "user", "content": f"Count to {i}"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def submit(client: OpenAI, data: bytes) -> Any:
    file = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait(client: OpenAI, batch_id: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in DONE:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not finish")


def test_openai_sdk_batch_round_trip(client: OpenAI) -> None:
    batch = submit(client, jsonl(10))
    assert batch.status == "validating" and batch.object == "batch"
    done = wait(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (10, 10)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.output_file_id is not None and done.error_file_id is None
    lines = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(10)]
    assert lines[0]["response"]["status_code"] == 200
    assert lines[0]["response"]["body"]["object"] == "chat.completion"
    assert batch.id in {b.id for b in client.batches.list(limit=5)}
    assert client.files.retrieve(batch.input_file_id).purpose == "batch"
    assert client.files.delete(batch.input_file_id).deleted


def test_validation_failure_names_the_line(client: OpenAI) -> None:
    data = jsonl(3) + b"{broken\n"
    done = wait(client, submit(client, data).id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    (error,) = done.errors.data
    assert (error.line, error.code) == (4, "invalid_json_line")


def test_cancel_half_way_keeps_the_finished_lines(client: OpenAI) -> None:
    # 40 lines in shards of 4, one shard at a time: cancelled well before the end.
    batch = submit(client, jsonl(40, max_tokens=16))
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).status == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts is not None and counts.completed < 40
    if counts.completed:
        assert done.output_file_id is not None
        text = client.files.content(done.output_file_id).text
        assert len(text.splitlines()) == counts.completed


def test_the_drop_folder_end_to_end_with_boto3(stack: BackgroundStack) -> None:
    env = stack.env()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = env["FIRST_DROP_BUCKET"]
    s3.put_object(Bucket=bucket, Key="inbox/dev/e2e.jsonl", Body=jsonl(6, prefix="drop"))
    deadline = time.monotonic() + 120
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            obj = s3.get_object(Bucket=bucket, Key="outbox/dev/e2e.status.json")
            status = json.loads(obj["Body"].read())
        except s3.exceptions.NoSuchKey:
            pass
        if status.get("status") in DONE:
            break
        time.sleep(0.2)
    assert status["status"] == "completed", status
    out = s3.get_object(Bucket=bucket, Key="outbox/dev/e2e.output.jsonl")["Body"].read()
    assert [json.loads(x)["custom_id"] for x in out.splitlines()] == [f"drop-{i}" for i in range(6)]


def dialect_jsonl(url: str, bodies: list[dict[str, Any]]) -> bytes:
    rows = [
        {"custom_id": f"d-{i}", "method": "POST", "url": url, "body": {"model": TINY, **body}}
        for i, body in enumerate(bodies)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def run_batch(client: OpenAI, url: str, data: bytes) -> tuple[Any, list[dict[str, Any]]]:
    file = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=url,  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait(client, batch.id)
    assert done.status == "completed", done.errors
    assert done.output_file_id is not None and done.error_file_id is None
    text = client.files.content(done.output_file_id).text
    return done, sorted((json.loads(x) for x in text.splitlines()), key=lambda x: x["custom_id"])


def test_a_responses_batch_answers_each_line_as_a_response_object(client: OpenAI) -> None:
    data = dialect_jsonl(
        "/v1/responses",
        [
            {"input": "Hello", "max_output_tokens": 2, "metadata": {"k": "v"}},
            {
                "instructions": "Be brief.",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
                "max_output_tokens": 64,
            },
        ],
    )
    done, lines = run_batch(client, "/v1/responses", data)
    assert done.endpoint == "/v1/responses" and done.request_counts.completed == 2
    for line in lines:
        body = Response.model_validate(line["response"]["body"])
        assert body.object == "response" and body.id.startswith("resp_")
        assert body.output and body.output[0].type == "message"
        assert body.usage is not None and body.usage.output_tokens >= 1
    first = Response.model_validate(lines[0]["response"]["body"])
    # Cut by max_output_tokens, as the route answers it.
    assert (first.status, first.metadata) == ("incomplete", {"k": "v"})
    assert Response.model_validate(lines[1]["response"]["body"]).instructions == "Be brief."


def test_a_messages_batch_answers_each_line_as_an_anthropic_message(client: OpenAI) -> None:
    data = dialect_jsonl(
        "/v1/messages",
        [
            {"max_tokens": 2, "messages": [{"role": "user", "content": "Hello"}]},
            {"max_tokens": 3, "system": "S", "messages": [{"role": "user", "content": "Hi"}]},
        ],
    )
    done, lines = run_batch(client, "/v1/messages", data)
    assert done.request_counts.completed == 2
    for line in lines:
        message = Message.model_validate(line["response"]["body"])
        assert message.type == "message" and message.role == "assistant"
        assert message.id == "msg_" + line["response"]["request_id"].removeprefix("req_")
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens >= 1


def test_a_responses_line_that_names_a_stored_conversation_fails_validation(
    client: OpenAI,
) -> None:
    data = dialect_jsonl("/v1/responses", [{"input": "Hi", "previous_response_id": "resp_x"}])
    file = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
    )
    done = wait(client, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    (error,) = done.errors.data
    assert (error.line, error.code, error.param) == (1, "invalid_body", "body.previous_response_id")
