"""The HPC node's RelaySender against a real HTTP server running the gateway's real ``Relay``.

The server hands each push to ``Relay.push`` (posting to a recording Management API) and answers
with the relay's own status, or, for the pushes listed in ``lose_answers``, posts it and then
answers 503, as a relay whose answer was lost on the way back would look to the sender.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import FirstError
from chalicelib.streaming.relay import Relay
from chalicelib.streaming.tokens import mint_for
from hpc_functions.streaming import (
    MAX_PUSH_BYTES,
    RelaySender,
    plan_pushes,
    run_stream_task,
    split_chunk,
)
from tests.servers import serving
from tests.unit.relay_fakes import RecordingPoster, chat_chunk

KEY = b"k" * 32
WAIT_S = 30.0


class RelayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, relay: Relay, lose_answers: set[int]) -> None:
        self.relay = relay
        self.lose_answers = lose_answers
        self.received: list[int] = []  # the seq of every request, in arrival order
        self.answered: list[int] = []  # the status answered to each
        self.lock = threading.Lock()
        self.delivered = threading.Event()  # set at each 2xx answer
        super().__init__(("127.0.0.1", 0), _RelayHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/relay/push"


class _RelayHandler(BaseHTTPRequestHandler):
    server: RelayServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        token = self.headers["Authorization"].removeprefix("Bearer ")
        seq = json.loads(raw)["seq"]
        with self.server.lock:
            self.server.received.append(seq)
            lose = self.server.received.count(seq) == 1 and seq in self.server.lose_answers
        try:
            delivery = self.server.relay.push(token, raw)
            # As the app's relay route answers: the dialect's state for the next push.
            answer = {"seq": delivery.seq, "frames": delivery.posted}
            if delivery.state is not None:
                answer["state"] = delivery.state
            status, body = (503, {}) if lose else (200, answer)
        except FirstError as exc:
            status, body = exc.STATUS_CODE, exc.to_body()
        data = json.dumps(body).encode()
        # Noted before the answer goes out: a sender that has read it (and returned from close())
        # must find it here; appended after the write, a fast client raced the server's thread.
        with self.server.lock:
            self.server.answered.append(status)
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if status < 300:
            self.server.delivered.set()


@pytest.fixture
def poster() -> RecordingPoster:
    return RecordingPoster()


def relay_server(poster: RecordingPoster, lose_answers: set[int]) -> Iterator[RelayServer]:
    with serving(RelayServer(Relay(KEY, poster), lose_answers)) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture
def losing_first_answer(poster: RecordingPoster) -> Iterator[RelayServer]:
    yield from relay_server(poster, lose_answers={1})


@pytest.fixture
def relay(poster: RecordingPoster) -> Iterator[RelayServer]:
    yield from relay_server(poster, lose_answers=set())


def test_a_push_whose_answer_was_lost_is_retried_with_its_seq_and_shown_once(
    losing_first_answer: RelayServer, poster: RecordingPoster
) -> None:
    server = losing_first_answer
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    sender = RelaySender(server.url, token, flush_ms=0, flush_tokens=1)
    sender.add(chat_chunk("a"))
    assert server.delivered.wait(WAIT_S)  # push 1: posted, answer lost, retried, acknowledged
    sender.add(chat_chunk("b"))
    sender.close()
    assert server.received == [1, 1, 2]
    assert server.answered == [503, 200, 200]
    assert sender.stats == {"pushes": 2, "push_retries": 1, "push_failures": 0}
    shown = [
        (f["seq"], f["part"], f["data"]["choices"][0]["delta"]["content"]) for _, f in poster.posts
    ]
    assert shown == [(1, 0, "a"), (2, 0, "b")]


def test_the_sender_carries_the_dialect_state_the_relay_answers_through_a_lost_answer(
    losing_first_answer: RelayServer, poster: RecordingPoster
) -> None:
    from tests.unit.test_dialects import NUMBERED

    server = losing_first_answer
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60, dialect=NUMBERED.name)
    sender = RelaySender(server.url, token, flush_ms=0, flush_tokens=1, state={})
    sender.add(chat_chunk("a"))
    assert server.delivered.wait(WAIT_S)  # push 1: posted, answer lost, retried with its state
    sender.add(chat_chunk("b"))
    sender.close()
    assert server.received == [1, 1, 2]
    assert [f["data"] for _, f in poster.posts] == [
        {"n": 0, "text": "open"},
        {"n": 1, "text": "a"},
        {"n": 2, "text": "b"},
    ]
    assert sender.state == {"n": 3, "open": True}


def test_a_410_from_the_relay_sets_the_cancel_event_and_stops_pushing(
    relay: RelayServer, poster: RecordingPoster
) -> None:
    poster.gone.add("conn-a")  # the client disconnected: the relay answers 410
    cancel = threading.Event()
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    sender = RelaySender(relay.url, token, flush_ms=0, flush_tokens=1, on_gone=cancel.set)
    sender.add(chat_chunk("a"))
    assert cancel.wait(WAIT_S)
    sender.add(chat_chunk("b"))  # taken after the 410: never pushed
    sender.close()
    assert sender.gone and relay.received == [1] and relay.answered == [410]
    assert poster.posts == []


def test_a_410_stops_a_real_generation_short_of_its_max_tokens(
    relay: RelayServer, poster: RecordingPoster, tiny_model_dir: Path
) -> None:
    asked = 1500
    poster.gone.add("conn-a")
    task = {
        "request_id": "req_1",
        "engine": {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)},
        "body": {
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": asked,
            "temperature": 0,
            "logit_bias": {"2": -100},  # no end-of-text: only the cancel can end it early
        },
        "stream": {
            "relay_url": relay.url,
            "token": mint_for(KEY, "req_1", "conn-a", "ref", 60),
            "flush_ms": 0,
            "flush_tokens": 1,
        },
    }
    result = run_stream_task("chat_completions", task)
    stats = result["stream_stats"]
    assert stats["cancelled"] is True
    assert 0 < result["response"]["usage"]["completion_tokens"] < asked
    # Cut short: no finish reason, not the "stop" of a natural end.
    assert [c["finish_reason"] for c in result["response"]["choices"]] == [None]
    assert relay.answered == [410]


@pytest.mark.parametrize(
    "text",
    [
        "x" * (200 * 1024),  # 200 KB of ASCII
        "\U0001f600" * 40_000,  # each escapes to 12 bytes in JSON: 480 KB as the relay posts it
        'a\U0001f600\n"é' * 30_000,
    ],
)
def test_a_chunk_over_the_frame_limit_is_split_and_arrives_whole(
    relay: RelayServer, poster: RecordingPoster, text: str
) -> None:
    # Pushed as one chunk, it made a frame over API Gateway's 128 KB: refused, and lost.
    token = mint_for(KEY, "req_1", "conn-a", "r" * 128, 60)
    sender = RelaySender(relay.url, token, flush_ms=0, flush_tokens=1)
    sender.add(chat_chunk("", role="assistant"))
    sender.add(chat_chunk(text))
    sender.add(chat_chunk(finish="stop"))
    sender.close()
    assert sender.stats["push_failures"] == 0 and sender.stats["pushes"] >= 1
    frames = [f for _, f in poster.posts]
    assert len(frames) > 1
    assert all(len(json.dumps(f, separators=(",", ":"))) <= 128 * 1024 for f in frames)
    assert "".join(f["data"]["choices"][0]["delta"].get("content") or "" for f in frames) == text
    reasons = [f["data"]["choices"][0]["finish_reason"] for f in frames]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert [(f["seq"], f["part"]) for f in frames] == sorted((f["seq"], f["part"]) for f in frames)


def test_a_batch_over_the_push_limit_goes_as_several_pushes() -> None:
    batch = [chat_chunk("y" * (100 * 1024)) for _ in range(25)]  # 2.5 MB coalesced
    pushes = plan_pushes(batch)
    assert len(pushes) > 1
    assert all(len(json.dumps(p)) <= MAX_PUSH_BYTES + 1024 for p in pushes)
    assert [c for p in pushes for c in p] == batch


def test_a_completion_chunk_is_split_on_its_text() -> None:
    choice = {"index": 1, "text": "z" * (300 * 1024), "logprobs": None, "finish_reason": "length"}
    chunk = {"id": "x", "object": "text_completion", "created": 1, "model": "m"}
    pieces = split_chunk({**chunk, "choices": [choice]})
    assert len(pieces) == 3
    assert "".join(p["choices"][0]["text"] for p in pieces) == choice["text"]
    assert [p["choices"][0]["index"] for p in pieces] == [1, 1, 1]
    assert [p["choices"][0]["finish_reason"] for p in pieces] == [None, None, "length"]
