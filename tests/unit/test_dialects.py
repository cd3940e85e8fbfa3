"""The stream dialect hook (chalicelib/protocol/dialects.py) through every transport's pure part:
the REST buffered body, the relay (per push, state carried by the pushes), the poller's closing
events and the capability token that names the dialect."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from pydantic import SecretStr

from chalicelib import sse
from chalicelib.protocol import dialects
from chalicelib.settings import Settings
from chalicelib.streaming import frames
from chalicelib.streaming.notifier import StreamNotifier
from chalicelib.streaming.relay import Relay
from chalicelib.streaming.tokens import mint_for, verify
from tests.unit.relay_fakes import RecordingPoster, chat_chunk

KEY = b"k" * 32
CHAT_RESULT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "system_fingerprint": "fp",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there friend"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


class Numbered(dialects.Dialect):
    """A dialect whose events need per-stream state: each is numbered from 0."""

    name = "test-numbered"

    def chunk_events(self, state: dict[str, Any], chunk: dict[str, Any]) -> list[dict[str, Any]]:
        text = chunk["choices"][0]["delta"].get("content") or ""
        out = []
        for piece in ([] if state.get("open") else ["open"]) + [text]:
            out.append({"n": state.get("n", 0), "text": piece})
            state["n"] = state.get("n", 0) + 1
        state["open"] = True
        return out

    def closing_events(
        self,
        state: dict[str, Any],
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        text = (result or {}).get("choices", [{}])[0].get("message", {}).get("content")
        return [{"n": state.get("n", 0), "status": status, "text": text}]


NUMBERED = dialects.register(Numbered())


def push(seq: int, state: dict[str, Any] | None, *pieces: str) -> bytes:
    body: dict[str, Any] = {"seq": seq, "chunks": [chat_chunk(p) for p in pieces]}
    if state is not None:
        body["state"] = state
    return json.dumps(body).encode()


def test_chat_is_the_identity_dialect_so_its_buffered_body_is_the_chat_sse_body() -> None:
    for include_usage in (True, False):
        state = {"include_usage": include_usage}
        assert dialects.render_buffered(dialects.CHAT, state, CHAT_RESULT) == sse.render(
            CHAT_RESULT, include_usage
        )


def test_the_token_names_the_dialect_and_chat_tokens_are_unchanged() -> None:
    assert verify(KEY, mint_for(KEY, "req_1", "c", None, 60)).dialect == "chat"
    token = mint_for(KEY, "req_1", "c", None, 60, dialect=NUMBERED.name)
    assert verify(KEY, token).dialect == NUMBERED.name


def test_the_relay_renders_pushes_from_the_state_they_carry_on_any_relay_process() -> None:
    poster = RecordingPoster()
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60, dialect=NUMBERED.name)
    first = Relay(KEY, poster).push(token, push(1, {}, "a", "b"))  # type: ignore[arg-type]
    assert first.state == {"n": 3, "open": True}
    # A retry of the same push (same state) on the same process: the same events, none reposted.
    again = Relay(KEY, poster).push(token, push(1, {}, "a", "b"))  # type: ignore[arg-type]
    assert again.state == first.state
    # The next push lands on another process (another Lambda container): numbering goes on.
    Relay(KEY, poster).push(token, push(2, first.state, "c"))  # type: ignore[arg-type]
    datas = [f["data"] for _, f in poster.posts if f["seq"] == 2]
    assert datas == [{"n": 3, "text": "c"}]
    assert [f["data"]["n"] for _, f in poster.posts[:3]] == [0, 1, 2]


def test_a_chat_push_answers_no_state_as_before() -> None:
    token = mint_for(KEY, "req_1", "conn-a", None, 60)
    delivery = Relay(KEY, RecordingPoster()).push(token, push(1, None, "a"))  # type: ignore[arg-type]
    assert delivery.state is None and delivery.posted == 1


def test_the_poller_posts_the_closing_events_after_every_push_and_before_done() -> None:
    poster = RecordingPoster()
    settings = Settings(stream_key=SecretStr("k" * 32))
    notifier = StreamNotifier(settings, poster, Logger(service="test"))  # type: ignore[arg-type]
    stream = {"connection_id": "conn-a", "ref": "r", "dialect": NUMBERED.name, "state": {}}
    fields = {"usage": CHAT_RESULT["usage"], "stream_stats": {"dialect_state": {"n": 7}}}
    assert notifier.finished("req_1", stream, "completed", fields, CHAT_RESULT)
    (_, closing), (_, done) = poster.posts
    assert closing["seq"] == frames.CLOSING_SEQ and closing["part"] == 0
    assert closing["data"] == {"n": 7, "status": "completed", "text": "Hello there friend"}
    assert done["type"] == "done" and "dialect_state" not in done.get("timing", {})
    # The task carries the dialect's first state for the HPC function to send with its pushes.
    task = notifier.task_fields("req_1", stream)
    assert task["state"] == {} and verify(KEY, task["token"]).dialect == NUMBERED.name


def test_a_chat_stream_gets_no_closing_events_over_the_websocket() -> None:
    poster = RecordingPoster()
    settings = Settings(stream_key=SecretStr("k" * 32))
    notifier = StreamNotifier(settings, poster, Logger(service="test"))  # type: ignore[arg-type]
    stream = {"connection_id": "conn-a", "ref": "r"}
    assert notifier.finished("req_1", stream, "completed", {"usage": {}}, CHAT_RESULT)
    assert [f["type"] for _, f in poster.posts] == ["done"]
