"""Streaming over the WebSocket API on the local stack: a real ``websockets`` client, and the real
OpenAI SDK through ``first proxy``.

Incremental arrival is shown with timestamps against the engine's own timings (the ``done``
frame carries them; the stack runs on this machine, so the clocks agree), never with sleeps.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from chalicelib.services import Services
from chalicelib.streaming.tokens import mint_for
from first_cli.client import StreamClient, stream_chat, stream_completion
from first_cli.proxy import Proxy
from offline.background import BackgroundStack
from offline.stack import free_port
from tests.e2e.conftest import BROKEN_MODEL, CORRUPT_MODEL, TINY, create_key
from tests.e2e.test_durability import wait_for
from tests.servers import serving

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
RECV_TIMEOUT_S = 60.0
# The tiny model's end-of-text token, banned: only a disconnect can end such a generation early.
NO_EOS = {"2": -100}


def ws_connect(stack: BackgroundStack, key: str | None = None) -> ClientConnection:
    token = key or stack.api_key
    return connect(
        stack.config.ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        legacy=True,  # also closed by hand, not only in a with block
    )


def send(ws: ClientConnection, ref: str, **body: Any) -> None:
    ws.send(json.dumps({"action": "chat.completions", "id": ref, "body": {"model": TINY, **body}}))


def frames_until_done(ws: ClientConnection, ref: str | None = None) -> list[dict[str, Any]]:
    """Frames (with their arrival time) until the ``done``/``error`` of ``ref`` (or any)."""
    out: list[dict[str, Any]] = []
    while True:
        frame = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
        frame["_at"] = time.time()
        out.append(frame)
        if frame["type"] in ("done", "error") and (ref is None or frame["id"] == ref):
            return out


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(
        f["data"]["choices"][0]["delta"].get("content") or ""
        for f in frames
        if f["type"] == "chunk"
    )


def token_counts(usage: Any) -> tuple[int, int, int]:
    """A usage's counts. Two runs of one prompt agree on them; ``cached_tokens`` may not (the
    second may find the first's prefix in the engine's cache, or land on another worker)."""
    assert usage is not None
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def wait_for_record(services: Services, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = services.requests.get(request_id)
        if record is not None and record["status"] in ("completed", "failed", "cancelled"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"{request_id} did not finish")


def test_chunks_arrive_while_the_engine_still_generates(stack: BackgroundStack) -> None:
    with ws_connect(stack) as ws:
        # Long enough that the relay's hop (milliseconds) is small beside the generation even
        # on a loaded machine: at 64 tokens a busy CI box once delivered the first chunk 2 ms
        # after the last token.
        send(ws, "a", messages=HELLO, max_tokens=512, temperature=0)
        frames = frames_until_done(ws, "a")
    chunks = [f for f in frames if f["type"] == "chunk"]
    done = frames[-1]
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 512
    timing = done["timing"]
    assert len(chunks) >= 2 and [c["seq"] for c in chunks] == sorted(c["seq"] for c in chunks)
    # The first chunk was in the client's hands before the engine produced its last token.
    assert chunks[0]["_at"] < timing["finished_at"]
    assert timing["first_token_at"] <= timing["first_push_at"] < timing["finished_at"]


def test_streamed_text_equals_the_plain_answer_and_the_stored_record(
    stack: BackgroundStack, client: OpenAI, services: Services
) -> None:
    params: dict[str, Any] = {"messages": HELLO, "max_tokens": 24, "temperature": 0, "seed": 3}
    plain = client.chat.completions.create(model=TINY, **params)
    with ws_connect(stack) as ws:
        send(ws, "same", **params)
        frames = frames_until_done(ws, "same")
    assert text_of(frames) == plain.choices[0].message.content
    done = frames[-1]
    assert plain.usage is not None
    # Token counts equal; cached_tokens is what each run found in its worker's prefix cache.
    counted = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert {k: done["usage"][k] for k in counted} == {
        k: v for k, v in plain.usage.model_dump().items() if k in counted
    }
    assert "cached_tokens" in done["usage"]["prompt_tokens_details"]
    # Stored as a non-streamed result: fetchable by id, with its usage.
    view = requests.get(
        f"{stack.config.api_url}/v1/requests/{done['request_id']}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=10,
    ).json()
    assert view["status"] == "completed"
    assert view["result"]["choices"][0]["message"]["content"] == text_of(frames)
    assert view["result"]["usage"] == done["usage"]


def test_two_requests_multiplexed_on_one_connection(stack: BackgroundStack) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    with StreamClient(stack.config.ws_url, stack.api_key) as streams:

        def run(name: str, max_tokens: int) -> None:
            body = {"model": TINY, "messages": HELLO, "max_tokens": max_tokens, "temperature": 0}
            results[name] = list(streams.frames("chat.completions", body))

        threads = [threading.Thread(target=run, args=(n, m)) for n, m in (("x", 40), ("y", 12))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(RECV_TIMEOUT_S)
    x, y = results["x"], results["y"]
    assert x[-1]["type"] == y[-1]["type"] == "done"
    assert x[-1]["usage"]["completion_tokens"] == 40 and y[-1]["usage"]["completion_tokens"] == 12
    assert len({f["request_id"] for f in x}) == 1 and len({f["request_id"] for f in y}) == 1
    assert x[0]["request_id"] != y[0]["request_id"] and x[0]["id"] != y[0]["id"]


def test_a_client_that_disconnects_stops_the_generation(
    stack: BackgroundStack, services: Services
) -> None:
    asked = 1500
    user = f"stream-cancel-{uuid.uuid4().hex[:6]}"
    key = create_key(stack, user)
    start = int(time.time()) - 1
    ws = ws_connect(stack, key)
    send(ws, "long", messages=HELLO, max_tokens=asked, temperature=0, logit_bias=NO_EOS)
    first = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
    assert first["type"] == "chunk"
    ws.close()
    record = wait_for_record(services, first["request_id"])
    # It was stored as a natural finish: completed, finish_reason "stop".
    assert record["status"] == "cancelled"
    assert record["stream_stats"]["cancelled"] is True
    ran = record["usage"]["completion_tokens"]
    assert 0 < ran < asked
    auth = {"Authorization": f"Bearer {key}"}
    view = requests.get(
        f"{stack.config.api_url}/v1/requests/{first['request_id']}", headers=auth, timeout=10
    ).json()
    assert view["status"] == "cancelled" and view["error"] is None
    assert view["result"]["usage"]["completion_tokens"] == ran  # the tokens that ran are kept
    assert view["result"]["choices"][0]["finish_reason"] is None

    def counted() -> dict[str, Any] | None:
        body = requests.get(
            f"{stack.config.api_url}/v1/usage", params={"start": start}, headers=auth, timeout=10
        ).json()
        return body["totals"] if body["totals"]["requests"] else None

    # The usage record is written off the request's path, within about a second.
    totals = wait_for(counted, 20, "the cancelled stream in the usage")
    assert (totals["requests"], totals["cancelled"], totals["errors"]) == (1, 1, 0)
    assert totals["completion_tokens"] == ran


def test_a_bad_token_is_refused_at_connect(stack: BackgroundStack) -> None:
    with pytest.raises(InvalidStatus) as caught:
        ws_connect(stack, "not-a-key")
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body)["error"]["code"] == "invalid_api_key"


def test_a_bad_token_in_the_query_is_refused_at_connect_and_a_good_one_streams(
    stack: BackgroundStack,
) -> None:
    # Browsers cannot set headers on a WebSocket: ?token= is read the same way.
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{stack.config.ws_url}/?token=not-a-key")
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body)["error"]["code"] == "invalid_api_key"
    with connect(f"{stack.config.ws_url}/?token={stack.api_key}") as ws:
        send(ws, "q", messages=HELLO, max_tokens=2, temperature=0)
        assert frames_until_done(ws, "q")[-1]["type"] == "done"


def connection_records(services: Services, owner: str) -> list[dict[str, Any]]:
    table = services.dynamodb.Table(services.settings.connections_table_name)
    items = table.scan(ConsistentRead=True)["Items"]
    return [dict(i) for i in items if i["owner"] == owner]


def test_disconnect_forgets_the_connection_and_an_expired_record_is_not_honoured(
    stack: BackgroundStack, services: Services
) -> None:
    user = "stream-conn"
    key = create_key(stack, user)
    table = services.dynamodb.Table(services.settings.connections_table_name)
    with ws_connect(stack, key) as ws:
        (record,) = connection_records(services, user)
        assert record["expires_at"] > time.time()
        # A record past its TTL that DynamoDB has not deleted yet (it deletes late; moto never).
        table.update_item(
            Key={"connection_id": record["connection_id"]},
            UpdateExpression="SET expires_at = :past",
            ExpressionAttributeValues={":past": int(time.time()) - 1},
        )
        send(ws, "late", messages=HELLO, max_tokens=2)
        (refused,) = frames_until_done(ws, "late")
    assert refused["type"] == "error" and refused["status"] == 401
    assert refused["request_id"] is None
    # $disconnect deletes the record.
    deadline = time.monotonic() + 30
    while connection_records(services, user) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connection_records(services, user) == []


def test_an_engine_failure_of_a_streamed_request_is_an_error_frame(
    stack: BackgroundStack, services: Services
) -> None:
    with ws_connect(stack) as ws:
        send(ws, "boom", model=CORRUPT_MODEL, messages=HELLO, max_tokens=4)
        frames = frames_until_done(ws, "boom")
    assert [f["type"] for f in frames] == ["error"]
    (failed,) = frames
    assert failed["status"] == 500 and failed["error"]["code"] == "engine_error"
    assert failed["request_id"].startswith("req_")
    record = services.requests.get(failed["request_id"])
    assert record is not None and record["status"] == "failed" and record["status_code"] == 500


def test_stream_chat_and_stream_completion_yield_the_sdk_s_types_from_local_env(
    stack: BackgroundStack, client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = stack.env()  # .first/local.env as make up writes it
    assert env["FIRST_WS_URL"] == stack.config.ws_url
    monkeypatch.setenv("FIRST_WS_URL", env["FIRST_WS_URL"])
    monkeypatch.setenv("OPENAI_API_KEY", env["OPENAI_API_KEY"])
    params: dict[str, Any] = {"model": TINY, "max_tokens": 20, "temperature": 0, "seed": 5}

    plain = client.chat.completions.create(messages=HELLO, **params)
    chunks = list(stream_chat(messages=HELLO, stream_options={"include_usage": True}, **params))
    assert chunks and all(type(c) is ChatCompletionChunk for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and token_counts(chunks[-1].usage) == token_counts(plain.usage)

    plain_text = client.completions.create(prompt="Once upon", **params)
    pieces = list(stream_completion(prompt="Once upon", **params))
    assert pieces and all(type(c) is Completion for c in pieces)
    assert "".join(c.choices[0].text for c in pieces if c.choices) == plain_text.choices[0].text


def test_validation_and_unknown_models_come_back_as_error_frames(stack: BackgroundStack) -> None:
    with ws_connect(stack) as ws:
        send(ws, "bad", messages=[])
        (bad,) = frames_until_done(ws, "bad")
        send(ws, "nope", model="no/such-model", messages=HELLO)
        (nope,) = frames_until_done(ws, "nope")
    assert bad["status"] == 400 and bad["request_id"] is None
    assert bad["error"]["param"] == "messages"
    assert nope["status"] == 404 and nope["error"]["code"] == "model_not_found"


def test_another_user_s_request_never_streams_to_you(stack: BackgroundStack) -> None:
    other = create_key(stack, "stream-other")
    with ws_connect(stack) as mine, ws_connect(stack, other) as theirs:
        send(mine, "mine", messages=HELLO, max_tokens=32, temperature=0)
        send(theirs, "theirs", messages=HELLO, max_tokens=8, temperature=0)
        my_frames = frames_until_done(mine, "mine")
        their_frames = frames_until_done(theirs, "theirs")
    my_ids = {f["request_id"] for f in my_frames}
    assert {f["id"] for f in their_frames} == {"theirs"}
    assert not my_ids & {f["request_id"] for f in their_frames}


def test_the_relay_refuses_forged_and_expired_capability_tokens(stack: BackgroundStack) -> None:
    url = f"{stack.config.api_url}/relay/push"
    body = {"seq": 1, "chunks": [{"choices": []}]}
    forged = mint_for(b"not the stack's key", "req_x", "conn", None, 600)
    expired = mint_for(stack.stream_key.encode(), "req_x", "conn", None, -1)
    for token, code in ((forged, "invalid_stream_token"), (expired, "expired_stream_token")):
        resp = requests.post(
            url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert resp.status_code == 401 and resp.json()["error"]["code"] == code
    # A genuine token for a request the table does not hold (expired, or never was): 410.
    genuine = mint_for(stack.stream_key.encode(), "req_x", "no-such-connection", None, 600)
    resp = requests.post(url, json=body, headers={"Authorization": f"Bearer {genuine}"}, timeout=10)
    assert resp.status_code == 410 and resp.json()["error"]["code"] == "request_finished"


def test_the_relay_refuses_pushes_once_the_request_has_finished(stack: BackgroundStack) -> None:
    # They were posted for the token's whole life (2 h), after the client had its done frame.
    with ws_connect(stack) as ws:
        send(ws, "done", messages=HELLO, max_tokens=4, temperature=0)
        done = frames_until_done(ws, "done")[-1]
        assert done["type"] == "done"
        conn_token = mint_for(
            stack.stream_key.encode(), done["request_id"], "no-such-connection", None, 600
        )
        url = f"{stack.config.api_url}/relay/push"
        headers = {"Authorization": f"Bearer {conn_token}"}
        body = {"seq": 10**6, "chunks": [{"choices": [], "id": "late"}]}
        # The relay reads the status at most once a second per request: within that, the push
        # still reaches the (absent) connection and is answered connection_gone.
        deadline = time.monotonic() + 30
        while True:
            resp = requests.post(url, json=body, headers=headers, timeout=10)
            assert resp.status_code == 410
            if resp.json()["error"]["code"] == "request_finished" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.json()["error"]["code"] == "request_finished"
        # seq is bounded: a 400 naming it.
        huge = requests.post(url, json={"seq": 2**70, "chunks": []}, headers=headers, timeout=10)
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "seq"


@pytest.fixture(scope="module")
def proxy(stack: BackgroundStack) -> Iterator[Proxy]:
    p = Proxy(stack.config.api_url, stack.config.ws_url, stack.api_key, "127.0.0.1", free_port())
    with serving(p):
        yield p


def test_the_openai_sdk_streams_for_real_through_first_proxy(
    proxy: Proxy, client: OpenAI, services: Services
) -> None:
    sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused-the-proxy-has-one", max_retries=0)
    sdk = sdk.with_options(api_key=client.api_key)
    params: dict[str, Any] = {"model": TINY, "messages": HELLO, "max_tokens": 64, "temperature": 0}
    plain = sdk.chat.completions.create(**params)  # forwarded as is
    arrivals: list[float] = []
    chunks = []
    stream = sdk.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        arrivals.append(time.time())
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and token_counts(chunks[-1].usage) == token_counts(plain.usage)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 2
    # Incremental, not a buffered body: the SDK had the first chunk before the engine produced
    # its last token (the engine's own clock, stored with the request; the same machine's).
    record = wait_for_record(services, stream.response.headers["x-request-id"])
    timing = record["stream_stats"]
    assert timing["cancelled"] is False
    assert arrivals[0] < timing["finished_at"]
    completion = sdk.completions.create(
        model=TINY, prompt="Once upon", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in completion if c.choices)


def test_an_sdk_caller_that_aborts_through_the_proxy_stops_the_generation(
    proxy: Proxy, stack: BackgroundStack, services: Services
) -> None:
    asked = 1500
    aborted = proxy.counts["aborted"]
    sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key=stack.api_key, max_retries=0)
    stream = sdk.chat.completions.create(
        model=TINY,
        messages=HELLO,
        max_tokens=asked,
        temperature=0,
        logit_bias=NO_EOS,
        stream=True,
    )
    request_id = stream.response.headers["x-request-id"]
    first = next(iter(stream))
    assert first.choices
    stream.close()  # the caller stops reading: its HTTP connection to the proxy closes
    sdk.close()
    record = wait_for_record(services, request_id)
    assert record["status"] == "cancelled"
    assert record["stream_stats"]["cancelled"] is True
    assert record["usage"]["completion_tokens"] < asked
    assert proxy.counts["aborted"] == aborted + 1


def test_the_proxy_collects_a_504_d_request_by_id_with_its_stored_status(
    proxy: Proxy, stack: BackgroundStack
) -> None:
    sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key=stack.api_key, max_retries=0)
    wait_0 = {"Prefer": "wait=0"}  # the gateway answers 504 at once; the request runs on
    collected = proxy.counts["collected"]
    done = sdk.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=6, temperature=0, extra_headers=wait_0
    )
    assert done.choices[0].message.content and done.usage and done.usage.completion_tokens
    assert proxy.counts["collected"] == collected + 1
    # A model whose weights are missing fails in the engine with 503: collected, it stays 503.
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(
            model=BROKEN_MODEL, messages=HELLO, max_tokens=4, extra_headers=wait_0
        )
    assert failed.value.status_code == 503
    assert failed.value.response.headers["x-request-id"].startswith("req_")
    assert proxy.counts["collected"] == collected + 2
