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


TOOL_CALLS = [
    {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"paris","units":"celsius"}'},
    },
    {"id": "call_b", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
]
CALLED = {
    **CHAT,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
}


def test_tool_calls_stream_as_openai_streams_them_and_the_sdk_reassembles_them() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    chunks = [json.loads(e) for e in events(sse.render(CALLED, include_usage=False))[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    # Per call: id, type and name first with empty arguments, then the arguments in pieces.
    heads = [d["tool_calls"][0] for d in deltas if "id" in d.get("tool_calls", [{}])[0]]
    assert heads == [
        {
            "index": i,
            "id": c["id"],
            "type": "function",
            "function": {**c["function"], "arguments": ""},
        }
        for i, c in enumerate(TOOL_CALLS)
    ]
    pieces = [d["tool_calls"][0] for d in deltas[1:-1] if "id" not in d["tool_calls"][0]]
    assert len([p for p in pieces if p["index"] == 0]) > 1
    assert all(set(p) == {"index", "function"} for p in pieces)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = state.get_final_completion().choices[0].message
    got = [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert got == [
        (c["id"], "function", c["function"]["name"], c["function"]["arguments"]) for c in TOOL_CALLS
    ]


def test_reasoning_content_streams_before_the_content() -> None:
    reasoned = {
        **CHAT,
        "choices": [
            {
                **CHAT["choices"][0],
                "message": {
                    "role": "assistant",
                    "content": "ok",
                    "reasoning_content": "think first",
                },
            }  # type: ignore[index]
        ],
    }
    chunks = [json.loads(e) for e in events(sse.render(reasoned, include_usage=False))[:-1]]
    keys = [next(iter(c["choices"][0]["delta"]), None) for c in chunks]
    assert keys == ["role", "reasoning_content", "reasoning_content", "content", None]
    text = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    assert text == "think first"
