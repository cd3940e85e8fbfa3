"""The pure parts of streaming: capability tokens, coalescing, frames, assembling, the relay."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from pydantic import SecretStr

from chalicelib.errors import (
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    StreamGoneError,
)
from chalicelib.settings import Settings
from chalicelib.streaming import frames
from chalicelib.streaming.notifier import StreamNotifier
from chalicelib.streaming.relay import Relay
from chalicelib.streaming.tokens import StreamClaims, StreamTokenError, mint, mint_for, verify
from hpc_functions.streaming import Assembler, Coalescer
from tests.unit.relay_fakes import RecordingPoster, Statuses, chat_chunk

KEY = b"k" * 32
NOW = 1_800_000_000.0


# -- tokens ----------------------------------------------------------------------------------


def test_a_minted_token_verifies_to_its_claims() -> None:
    token = mint_for(KEY, "req_1", "conn=", "ref-1", 60, now=NOW)
    assert verify(KEY, token, now=NOW + 59) == StreamClaims(
        "req_1", "conn=", "ref-1", int(NOW) + 60
    )


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint_for(b"another key" * 3, "req_1", "c", None, 60, now=NOW), "bad signature"),
        ("nodot", "malformed"),
        ("", "malformed"),
    ],
)
def test_forged_or_malformed_tokens_are_refused(token: str, reason: str) -> None:
    with pytest.raises(StreamTokenError) as caught:
        verify(KEY, token, now=NOW)
    assert caught.value.reason == reason


def test_a_token_whose_claims_were_edited_is_refused() -> None:
    token = mint(KEY, StreamClaims("req_1", "conn-a", None, int(NOW) + 60))
    other = mint(KEY, StreamClaims("req_1", "conn-b", None, int(NOW) + 60))
    forged = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(StreamTokenError, match="bad signature"):
        verify(KEY, forged, now=NOW)


def test_an_expired_token_is_refused() -> None:
    token = mint_for(KEY, "req_1", "c", None, 60, now=NOW)
    with pytest.raises(StreamTokenError, match="expired"):
        verify(KEY, token, now=NOW + 60)


# -- coalescing ------------------------------------------------------------------------------


def test_the_first_token_flushes_at_once_then_every_interval_or_n_tokens() -> None:
    c = Coalescer(flush_tokens=3, flush_s=0.05)
    c.add(chat_chunk("", role="assistant"))
    assert not c.due(0.0)  # a role alone is no token: it waits for the first one
    c.add(chat_chunk("Hel"))
    assert c.due(0.0)
    assert c.take(0.0) == [chat_chunk("Hel", role="assistant")]
    c.add(chat_chunk("lo"))
    assert not c.due(0.01) and c.wait_s(0.01) == pytest.approx(0.04)
    assert c.due(0.05)
    c.add(chat_chunk(" wor"))
    c.add(chat_chunk("ld"))
    assert c.due(0.01 + 0.0)  # three tokens pending
    assert c.take(0.06)[0]["choices"][0]["delta"] == {"content": "lo world"}
    assert c.wait_s(0.07) is None  # nothing pending: only a token can make it due


def test_a_finish_flushes_at_once_and_rides_with_the_text() -> None:
    c = Coalescer(flush_tokens=100, flush_s=10.0)
    c.take(0.0)
    c.add(chat_chunk("end"))
    assert not c.due(0.1)
    c.add(chat_chunk(finish="stop"))
    assert c.due(0.1)
    (merged,) = c.take(0.1)
    assert merged["choices"][0] == {
        "index": 0,
        "delta": {"content": "end"},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_completion_chunks_merge_per_choice_and_usage_chunks_are_left_out() -> None:
    c = Coalescer(flush_tokens=16, flush_s=0.05)

    def text(index: int, piece: str) -> dict[str, Any]:
        choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": None}
        return {
            "id": "x",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }

    for chunk in (text(0, "a"), text(1, "b"), text(0, "c"), text(1, "d")):
        c.add(chunk)
    c.add({"id": "x", "object": "text_completion", "choices": [], "usage": {"prompt_tokens": 1}})
    out = c.take(0.0)
    assert [o["choices"][0]["text"] for o in out] == ["ac", "bd"]
    assert all("usage" not in o for o in out)


def test_the_assembled_response_is_the_plain_one() -> None:
    a = Assembler()
    for chunk in (
        chat_chunk("", role="assistant"),
        chat_chunk("Hi"),
        chat_chunk(" you"),
        chat_chunk(finish="length"),
    ):
        a.add(chunk)
    a.add(
        {
            "id": "c1",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    response = a.response("chat_completions")
    assert response["object"] == "chat.completion" and response["id"] == "c1"
    assert response["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi you", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert response["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


# -- frames and the relay ------------------------------------------------------------------


def test_frames_carry_the_client_reference_and_the_request_id() -> None:
    assert json.loads(frames.chunk("r", "req_1", 2, 0, {"x": 1})) == {
        "type": "chunk",
        "id": "r",
        "request_id": "req_1",
        "seq": 2,
        "part": 0,
        "data": {"x": 1},
    }
    done = json.loads(
        frames.done("r", "req_1", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    )
    assert done == {
        "type": "done",
        "id": "r",
        "request_id": "req_1",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    error = json.loads(frames.error(None, None, AuthenticationError("no")))
    assert error["status"] == 401 and error["request_id"] is None
    assert error["error"]["code"] == "invalid_api_key"


def push(seq: int, *pieces: str) -> bytes:
    return json.dumps({"seq": seq, "chunks": [chat_chunk(p) for p in pieces]}).encode()


def test_the_relay_posts_each_chunk_to_the_token_s_connection_once() -> None:
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    assert relay.push(token, push(1, "a", "b")).posted == 2
    assert relay.push(token, push(1, "a", "b")).posted == 0  # a retry: not shown twice
    assert relay.push(token, push(2, "c")).posted == 1
    assert [(c, f["seq"], f["part"], f["id"]) for c, f in poster.posts] == [
        ("conn-a", 1, 0, "ref"),
        ("conn-a", 1, 1, "ref"),
        ("conn-a", 2, 0, "ref"),
    ]


def test_the_relay_refuses_forged_tokens_and_answers_gone_for_closed_connections() -> None:
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError) as caught:
        relay.push(mint_for(b"x" * 32, "req_1", "conn-a", None, 60), push(1, "a"))
    assert caught.value.code == "invalid_stream_token"
    with pytest.raises(AuthenticationError) as caught:
        relay.push(mint_for(KEY, "req_1", "conn-a", None, -1), push(1, "a"))
    assert caught.value.code == "expired_stream_token"
    poster.gone.add("conn-a")
    with pytest.raises(StreamGoneError) as gone:
        relay.push(mint_for(KEY, "req_1", "conn-a", None, 60), push(1, "a"))
    assert gone.value.STATUS_CODE == 410 and poster.posts == []


def test_an_engine_failure_of_a_streamed_request_is_an_error_frame_with_its_status() -> None:
    poster = RecordingPoster()
    settings = Settings(stream_key=SecretStr("k" * 32))
    notifier = StreamNotifier(settings, poster, Logger(service="test"))  # type: ignore[arg-type]
    stored = {
        "error": {"message": "no weights", "type": "server_error", "code": "model_unavailable"},
        "status_code": 503,
    }
    stream = {"connection_id": "conn-a", "ref": "ref-1"}
    assert notifier.finished("req_9", stream, "failed", stored) is True
    ((connection, frame),) = poster.posts
    assert connection == "conn-a"
    assert (frame["type"], frame["id"], frame["request_id"], frame["status"]) == (
        "error",
        "ref-1",
        "req_9",
        503,
    )
    assert frame["error"]["message"] == "no weights"
    assert frame["error"]["code"] == "model_unavailable"
    # A client already gone: the record holds the outcome, the frame is counted undelivered.
    poster.gone.add("conn-a")
    assert notifier.finished("req_9", stream, "failed", stored) is False
    assert notifier.counts["final_frames_undelivered"] == 1


# -- the relay: what it refuses (issue 16 items 4 and 5) -------------------------------------


def big_push(seq: int, *sizes: int) -> bytes:
    return json.dumps({"seq": seq, "chunks": [chat_chunk("x" * n) for n in sizes]}).encode()


def test_a_push_with_a_frame_over_128_kb_is_refused_whole_and_blocks_nothing_after_it() -> None:
    # It was a 500 after posting the push's earlier chunks unrecorded: each retry posted them
    # again, and a chunk that is always too big stood in front of every later push.
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    for _ in range(2):  # the sender's retry meets the same answer
        with pytest.raises(PayloadTooLargeError) as caught:
            relay.push(token, big_push(1, 10, 200 * 1024))
        assert caught.value.STATUS_CODE == 413 and caught.value.param == "chunks"
        assert caught.value.to_body()["error"]["type"] == "invalid_request_error"
    assert poster.posts == []  # nothing of it: delivered whole or not at all
    assert relay.push(token, push(2, "after")).posted == 1
    assert [(f["seq"], f["part"]) for _, f in poster.posts] == [(2, 0)]
    assert relay.counts["frames_too_large"] == 2


def test_a_push_that_fails_part_way_is_resumed_by_its_retry_not_posted_again() -> None:
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)

    class Throttled(Exception):
        pass

    real_post = poster.post
    calls = iter([True, False])  # the first frame goes out, the second one fails

    def flaky_post(connection_id: str, text: str) -> None:
        if not next(calls, True):
            raise Throttled
        real_post(connection_id, text)

    poster.post = flaky_post  # type: ignore[method-assign]
    with pytest.raises(Throttled):
        relay.push(token, push(1, "a", "b", "c"))
    assert relay.push(token, push(1, "a", "b", "c")).posted == 2
    assert [(f["seq"], f["part"]) for _, f in poster.posts] == [(1, 0), (1, 1), (1, 2)]


@pytest.mark.parametrize("seq", [0, -1, 2**31, 2**70, 1.0, "1", True, None, [1]])
def test_a_seq_outside_1_to_2_31_minus_1_is_a_400_naming_it(seq: Any) -> None:
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    raw = json.dumps({"seq": seq, "chunks": [chat_chunk("a")]}).encode()
    with pytest.raises(BadRequestError) as caught:
        relay.push(token, raw)
    assert caught.value.STATUS_CODE == 400 and caught.value.param == "seq"
    assert relay.push(token, push(2**31 - 1, "last")).posted == 1
    assert poster.posts[0][1]["seq"] == 2**31 - 1


def test_an_empty_push_never_moves_the_marker_that_drops_retries() -> None:
    # An empty push numbered 2**31 - 1 made every later real push look like a retry: dropped.
    poster = RecordingPoster()
    relay = Relay(KEY, poster)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    empty = json.dumps({"seq": 2**31 - 1, "chunks": []}).encode()
    assert relay.push(token, empty).posted == 0
    assert relay.push(token, push(1, "a")).posted == 1
    assert relay.push(token, push(2, "b")).posted == 1
    assert [f["data"]["choices"][0]["delta"]["content"] for _, f in poster.posts] == ["a", "b"]


def test_a_push_nested_past_the_parser_s_depth_is_a_400_not_a_crash() -> None:
    relay = Relay(KEY, RecordingPoster())  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    with pytest.raises(BadRequestError):
        relay.push(token, b'{"seq": 1, "chunks": ' + b"[" * 200_000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", None])
def test_pushes_after_the_request_finished_are_refused_with_410(status: str | None) -> None:
    # They were posted for the token's whole life (2 h), after the client had its done frame.
    poster, clock = RecordingPoster(), Clock()
    statuses = Statuses(req_1="dispatched")
    relay = Relay(KEY, poster, requests=statuses, recheck_s=1.0, clock=clock)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    assert relay.push(token, push(1, "a")).posted == 1
    if status is None:
        del statuses.statuses["req_1"]  # expired and gone from the table
    else:
        statuses.statuses["req_1"] = status
    clock.now = 1.0  # the status is read again at most every recheck_s
    for seq in (2, 3):
        with pytest.raises(StreamGoneError) as caught:
            relay.push(token, push(seq, "late"))
        assert caught.value.STATUS_CODE == 410 and caught.value.code == "request_finished"
    # An empty push is refused the same way, and a terminal status is never read again.
    with pytest.raises(StreamGoneError):
        relay.push(token, json.dumps({"seq": 9, "chunks": []}).encode())
    assert statuses.reads == 2
    assert len(poster.posts) == 1


def test_a_live_stream_s_status_is_read_once_per_recheck_interval_not_per_push() -> None:
    clock = Clock()
    statuses = Statuses(req_1="dispatched")
    relay = Relay(KEY, RecordingPoster(), requests=statuses, recheck_s=1.0, clock=clock)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", "ref", 60)
    for seq in range(1, 21):
        clock.now = seq * 0.05  # a push every 50 ms for a second
        relay.push(token, push(seq, "t"))
    assert statuses.reads == 1
