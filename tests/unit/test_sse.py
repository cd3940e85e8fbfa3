"""Buffered SSE bodies parse, chunk by chunk, into what the OpenAI SDK expects."""

import json

from chalicelib import sse

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello big world"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


def events(body: str) -> list[str]:
    assert body.endswith("data: [DONE]\n\n")
    return [e.removeprefix("data: ") for e in body.strip().split("\n\n")]


def test_chat_stream_has_role_content_finish_usage_and_done() -> None:
    out = events(sse.render(CHAT, include_usage=True))
    assert out[-1] == "[DONE]"
    chunks = [json.loads(e) for e in out[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "hello big world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage_key() -> None:
    chunks = [json.loads(e) for e in events(sse.render(CHAT, include_usage=False))[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_text_completion_stream_reassembles_each_choice() -> None:
    response = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "text": "a b", "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "text": "c", "logprobs": None, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
    chunks = [json.loads(e) for e in events(sse.render(response, include_usage=True))[:-1]]
    by_index: dict[int, str] = {}
    finish: dict[int, str] = {}
    for c in chunks[:-1]:
        choice = c["choices"][0]
        by_index[choice["index"]] = by_index.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert by_index == {0: "a b", 1: "c"}
    assert finish == {0: "stop", 1: "length"}
