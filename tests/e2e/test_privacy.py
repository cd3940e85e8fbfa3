"""No prompt, completion, key or token in any log of the stack (issue 12, "Secrets and privacy").

One test plants a unique canary in every kind of request the gateway takes: REST chat (plain and
``stream=true``), completions, embeddings, a streamed chat over the WebSocket API, a batch through
the Files/Batches API, a batch through the S3 drop folder, and requests that fail: a bad field
value, an unknown model, invalid JSON, an engine failure, an invalid batch line, a bad WebSocket
message, a bad key and a bearer token. It waits for all of them to finish, then reads every file
under the stack's home (``logs/*.log``: each process's stdout and stderr, the orchestrator's
included) and the key itself, the completions the engine produced, and the canaries must not be
in any of them.

Echoing a bad value back to the client (``Invalid model 'X'``) is fine: the client sent it. Logging
it is not, since a model name or a field value can carry user text.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from openai import OpenAI
from websockets.exceptions import InvalidStatus

from chalicelib.services import Services
from chalicelib.stores.keys import hash_key, new_key
from offline.background import BackgroundStack
from tests.e2e.conftest import CORRUPT_MODEL, TINY, create_key
from tests.e2e.test_batch import wait
from tests.e2e.test_streaming import frames_until_done, ws_connect

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
USER = "privacy"
# Generated text shorter than this could turn up in a log by chance (a word, a number).
MIN_TEXT_CHARS = 12
STREAM_TOKEN_PREFIX = base64.urlsafe_b64encode(b'{"r":"').decode().rstrip("=")


class Canaries:
    """Unique strings, one per place they are planted; all share a prefix found by one grep."""

    def __init__(self) -> None:
        self.prefix = f"CANARY{uuid.uuid4().hex[:16]}"
        self.planted: list[str] = []

    def __call__(self, where: str) -> str:
        value = f"{self.prefix}-{where}"
        self.planted.append(value)
        return value


def batch_lines(canary: Canaries, kind: str, n: int) -> bytes:
    """``n`` good lines, each with a canary in its prompt."""
    return jsonl(
        {
            "custom_id": f"{kind}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY,
                "messages": [{"role": "user", "content": canary(f"{kind}-line-{i}")}],
                "max_tokens": 8,
            },
        }
        for i in range(n)
    )


def bad_batch_lines(canary: Canaries, kind: str) -> bytes:
    """Lines that fail validation (the batch fails with errors naming them, never logging them):
    a bad field value, then a model that does not exist."""
    messages = [{"role": "user", "content": canary(f"{kind}-bad-line")}]
    return jsonl(
        {
            "custom_id": f"{kind}-bad-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
        for i, body in enumerate(
            [
                {"model": TINY, "messages": messages, "temperature": canary(f"{kind}-temp")},
                {"model": canary(f"{kind}-model"), "messages": messages},
            ]
        )
    )


def jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def s3_client(stack: BackgroundStack) -> Any:
    env = stack.env()
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def drop_batch(stack: BackgroundStack, data: bytes, owner: str) -> dict[str, Any]:
    s3, bucket = s3_client(stack), stack.env()["FIRST_DROP_BUCKET"]
    name = f"privacy-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=bucket, Key=f"inbox/{owner}/{name}.jsonl", Body=data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            obj = s3.get_object(Bucket=bucket, Key=f"outbox/{owner}/{name}.status.json")
            status: dict[str, Any] = json.loads(obj["Body"].read())
            if status.get("status") in ("completed", "failed", "cancelled", "expired"):
                return status
        except s3.exceptions.NoSuchKey:
            pass
        time.sleep(0.2)
    raise AssertionError(f"drop-folder batch {name} did not finish")


def post(stack: BackgroundStack, key: str, path: str, body: bytes | dict[str, Any]) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{stack.config.api_url}/v1/{path}",
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=60,
    )


def logs_of(stack: BackgroundStack) -> dict[Path, str]:
    """Every file the stack wrote under its home that a person or a log shipper would read."""
    out: dict[Path, str] = {}
    for path in sorted(stack.config.home.rglob("*")):
        if path.is_file() and (path.suffix in (".log", ".out", ".err") or "logs" in path.parts):
            out[path] = path.read_text(errors="replace")
    return out


def test_no_canary_key_or_completion_reaches_any_log(
    stack: BackgroundStack, services: Services
) -> None:
    canary = Canaries()
    key = create_key(stack, USER)
    client = OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=key, max_retries=0)
    outputs: list[str] = []

    # Interactive requests that succeed.
    chat = client.chat.completions.create(
        model=TINY,
        messages=[
            {"role": "system", "content": canary("system")},
            {"role": "user", "content": canary("chat")},
        ],
        max_tokens=32,
        user=canary("user-field"),
        stop=[canary("stop")],
    )
    outputs.append(chat.choices[0].message.content or "")
    streamed = client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": canary("rest-stream")}],
        max_tokens=16,
        stream=True,
    )
    outputs.append("".join(c.choices[0].delta.content or "" for c in streamed if c.choices))
    completion = client.completions.create(model=TINY, prompt=canary("completion"), max_tokens=32)
    outputs.append(completion.choices[0].text)
    emb = client.embeddings.create(model=EMBEDDING_MODEL, input=[canary("embedding")])
    assert len(emb.data[0].embedding) == 384

    # A streamed chat over the WebSocket API, and a message it refuses.
    with ws_connect(stack, key) as ws:
        body = {"model": TINY, "messages": [{"role": "user", "content": canary("ws")}]}
        ws.send(
            json.dumps(
                {"action": "chat.completions", "id": "a", "body": {**body, "max_tokens": 16}}
            )
        )
        frames = frames_until_done(ws, "a")
        assert frames[-1]["type"] == "done"
        outputs.append(
            "".join(
                f["data"]["choices"][0]["delta"].get("content") or ""
                for f in frames
                if f["type"] == "chunk"
            )
        )
        bad = {**body, "temperature": canary("ws-temperature")}
        ws.send(json.dumps({"action": "chat.completions", "id": "b", "body": bad}))
        assert frames_until_done(ws, "b")[-1]["type"] == "error"
        ws.send(json.dumps({"action": canary("ws-action"), "id": "c", "body": body}))
        assert frames_until_done(ws, "c")[-1]["type"] == "error"
        unknown_model = {**body, "model": canary("ws-model")}
        ws.send(json.dumps({"action": "chat.completions", "id": "d", "body": unknown_model}))
        assert frames_until_done(ws, "d")[-1]["error"]["code"] == "model_not_found"
        ws.send(canary("ws-not-json"))
        assert frames_until_done(ws)[-1]["type"] == "error"

    # Requests that fail: the client may see its own value echoed; no log may.
    messages = [{"role": "user", "content": canary("error-content")}]
    bad_field = post(
        stack,
        key,
        "chat/completions",
        {"model": TINY, "messages": messages, "temperature": canary("temperature")},
    )
    assert bad_field.status_code == 400, bad_field.text
    unknown = post(stack, key, "chat/completions", {"model": canary("model"), "messages": messages})
    assert unknown.status_code == 404, unknown.text
    broken_json = post(stack, key, "chat/completions", f'{{"model": "{canary("json")}", ['.encode())
    assert broken_json.status_code == 400, broken_json.text
    bad_role = post(
        stack,
        key,
        "chat/completions",
        {"model": TINY, "messages": [{"role": canary("role"), "content": "x"}]},
    )
    assert bad_role.status_code == 400, bad_role.text
    engine = post(
        stack,
        key,
        "chat/completions",
        {"model": CORRUPT_MODEL, "messages": [{"role": "user", "content": canary("engine")}]},
    )
    assert engine.status_code == 500, engine.text

    # Credentials that are refused: a well-formed unknown key, a Globus-style bearer token.
    unknown_key, bearer = new_key(), canary("bearer")
    for credential in (unknown_key, bearer):
        refused = post(stack, credential, "chat/completions", {"model": TINY, "messages": messages})
        assert refused.status_code == 401, refused.text
        with pytest.raises(InvalidStatus):
            ws_connect(stack, credential).close()

    # Batches: the Files/Batches API, and the S3 drop folder (owner "dev", the stack's key).
    for data, expected in [
        (batch_lines(canary, "files", 3), "completed"),
        (bad_batch_lines(canary, "files"), "failed"),
    ]:
        file = client.files.create(file=("privacy.jsonl", io.BytesIO(data)), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait(client, batch.id)
        assert done.status == expected, done
        if done.output_file_id:
            outputs += [
                json.loads(line)["response"]["body"]["choices"][0]["message"]["content"]
                for line in client.files.content(done.output_file_id).text.splitlines()
            ]
    assert drop_batch(stack, batch_lines(canary, "drop", 3), "dev")["status"] == "completed"
    assert drop_batch(stack, bad_batch_lines(canary, "drop"), "dev")["status"] == "failed"

    # Keys are stored hashed: the plaintext key is nowhere in the table.
    items = services.dynamodb.Table(services.settings.keys_table_name).scan()["Items"]
    assert any(hash_key(key) in json.dumps(item, default=str) for item in items)
    assert not any(key in json.dumps(item, default=str) for item in items)

    # The completions check below is not vacuous: the engine did produce text to look for.
    assert sum(len(text) >= MIN_TEXT_CHARS for text in outputs) >= 3, outputs

    logs = logs_of(stack)
    assert logs, f"no logs under {stack.config.home}"
    secrets = {
        "api key": key,
        "unknown key": unknown_key,
        "dev key": stack.api_key,
        "endpoint token": stack.endpoint_token,
        "stream key": stack.stream_key,
        # Every streaming capability token starts with base64url('{"r":"'), its request id claim.
        "capability token": STREAM_TOKEN_PREFIX,
    }
    secrets.update(
        {f"completion {i}": text for i, text in enumerate(outputs) if len(text) >= MIN_TEXT_CHARS}
    )
    leaks = [
        f"{path.name}: {line.strip()[:300]}"
        for path, text in logs.items()
        for line in text.splitlines()
        if canary.prefix in line or any(s in line for s in secrets.values())
    ]
    assert not leaks, "\n".join(leaks[:40])
