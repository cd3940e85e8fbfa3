"""The Messages API's body translated to chat and the chat answer rendered as Anthropic's message
(chalicelib/protocol/messages.py), its buffered events, and its errors in Anthropic's shape on its
routes only (the app through Chalice's LocalGateway)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from chalice.config import Config
from chalice.local import LocalGateway

from app import app
from chalicelib import openapi
from chalicelib.errors import (
    AuthenticationError,
    BadRequestError,
    FirstError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    UpstreamUnavailableError,
)
from chalicelib.protocol import dialects
from chalicelib.protocol.common import validate
from chalicelib.protocol.messages import MessagesRequest, to_message
from chalicelib.protocol.messages_stream import MESSAGES, MessagesAsChat, stream_state

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    return validate({**body, **fields}, MessagesRequest)


def test_system_turns_and_stop_sequences_become_a_chat_request() -> None:
    req = request(
        system=[{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        stop_sequences=["x", "yz"],
        temperature=0.5,
        top_k=5,
        metadata={"user_id": "u1"},
    )
    chat = req.to_chat()
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "be brief\nbe kind"),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c"),
    ]
    assert chat.stop == ["x", "yz"] and chat.max_tokens == 16 and chat.temperature == 0.5
    assert chat.user == "u1"
    assert chat.engine_body()["top_k"] == 5


def test_tools_tool_choice_tool_use_and_tool_result_map_to_chat_tools() -> None:
    req = request(
        tools=[{"name": "get_weather", "description": "w", "input_schema": WEATHER}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ],
    )
    body = req.to_chat().engine_body()
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER, "description": "w"},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assistant, tool, user = body["messages"][1:]
    assert assistant.get("content") is None
    assert assistant["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "x"}',
    }
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "sunny"}
    assert user == {"role": "user", "content": "and tomorrow?"}


@pytest.mark.parametrize(
    ("choice", "chat"), [("auto", "auto"), ("any", "required"), ("none", "none")]
)
def test_tool_choice_types_map_to_chat_tool_choices(choice: str, chat: str) -> None:
    req = request(tools=[{"name": "f", "input_schema": WEATHER}], tool_choice={"type": choice})
    assert req.to_chat().tool_choice == chat


def test_an_error_tool_result_says_so_to_the_model() -> None:
    req = request(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "is_error": True,
                        "content": [{"type": "text", "text": "boom"}],
                    }
                ],
            },
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
    )
    assert req.to_chat().messages[-1].content == "Error: boom"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "data": "AA=="}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "https://x"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"tools": [{"name": "web", "type": "web_search_20250305", "input_schema": {}}]}, None),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}],
                    }
                ]
            },
            "messages",
        ),
    ],
)
def test_what_chat_cannot_say_is_a_400_naming_the_field(
    fields: dict[str, Any], param: str | None
) -> None:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(BadRequestError) as caught:
        validate(body, MessagesRequest).to_chat()
    if param is not None:
        assert caught.value.param == param


# Claude Code's SendMessage tool uses allOf: Anthropic takes any JSON Schema in input_schema.
ALL_OF = {"type": "object", "properties": {"to": {"type": "string"}}, "allOf": [{"required": []}]}


def test_a_tool_with_any_json_schema_is_taken_and_a_strict_one_must_fit_the_subset() -> None:
    chat = request(tools=[{"name": "SendMessage", "input_schema": ALL_OF}]).to_chat()
    assert chat.tools == [
        {"type": "function", "function": {"name": "SendMessage", "parameters": ALL_OF}}
    ]
    with pytest.raises(BadRequestError) as caught:
        request(tools=[{"name": "SendMessage", "input_schema": ALL_OF, "strict": True}]).to_chat()
    assert caught.value.param == "tools"
    assert "tools[0].function.parameters: 'allOf' is not supported" in caught.value.message


def chat_result(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("stop", {"stop_reason": "yz"}, "stop_sequence", "yz"),
        ("stop", {"stop_reason": 2}, "end_turn", None),  # vLLM: an eos token id
    ],
)
def test_the_answer_is_an_anthropic_message_with_its_stop_reason(
    finish: str, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    result = chat_result({"role": "assistant", "content": "hello"}, finish, **extra)
    message = to_message(result, request(stop_sequences=["yz"]), "req_abc")
    assert message == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "hello"}],
        "model": "m",
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }


def test_tool_calls_and_reasoning_come_back_as_tool_use_and_thinking_blocks() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    result = chat_result(
        {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [call]},
        "stop",
    )
    message = to_message(result, request(), "req_x")
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "thinking", "thinking": "r", "signature": ""},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
    ]


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message a client rebuilds from the events (as the anthropic SDK does)."""
    assert [e["type"] for e in events[:2]] == ["message_start", "ping"]
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    message = dict(events[0]["message"])
    blocks: list[dict[str, Any]] = []
    raw: dict[int, str] = {}
    open_blocks: set[int] = set()
    for event in events[2:-2]:
        if event["type"] == "content_block_start":
            assert event["index"] == len(blocks) and not open_blocks
            blocks.append(dict(event["content_block"]))
            open_blocks.add(event["index"])
        elif event["type"] == "content_block_stop":
            open_blocks.remove(event["index"])
        else:
            assert event["index"] in open_blocks
            delta, block = event["delta"], blocks[event["index"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                raw[event["index"]] = raw.get(event["index"], "") + delta["partial_json"]
    assert not open_blocks
    for index, text in raw.items():
        blocks[index]["input"] = json.loads(text)
    message.update(content=blocks, **events[-2]["delta"])
    message["usage"] = {**message["usage"], **events[-2]["usage"]}
    return message


def sse_events(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas]
    return datas


def test_buffered_events_rebuild_the_message() -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"a":"a long value, in pieces"}'},
    }
    result = chat_result(
        {
            "role": "assistant",
            "content": "two words",
            "reasoning_content": "hm",
            "tool_calls": [call],
        },
        "tool_calls",
    )
    req = request()
    message = to_message(result, req, "req_x")
    state = stream_state("msg_x", "m", None)
    state["input_tokens"] = 7
    rebuilt = accumulate(sse_events(dialects.render_buffered(MESSAGES, state, result)))
    assert rebuilt == message


def test_live_chunks_over_several_pushes_end_as_the_message() -> None:
    # As the relay renders them: each push from the state the one before answered with (JSON).
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    pushes = [
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "ab"})],
        [chunk({"content": "c"}), chunk({"content": "d"})],
    ]
    state: dialects.State = stream_state("msg_y", "m", ["zz"])
    events: list[dict[str, Any]] = []
    for push in pushes:
        out, state = dialects.push_events(MESSAGES, json.loads(json.dumps(state)), push)
        events += out
    result = chat_result({"role": "assistant", "content": "abcd"}, "stop", stop_reason="zz")
    events += MESSAGES.closing_events(
        dialects.closing_state(stream_state("msg_y", "m", ["zz"]), state), "completed", result
    )
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "abcd"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "zz")
    assert message["usage"] == {"input_tokens": 7, "output_tokens": 3}
    assert message["id"] == "msg_y"


def test_a_stream_error_is_an_anthropic_error_event() -> None:
    text = MESSAGES.sse_error(RateLimitError("slow down").to_body()["error"], None)
    assert text.startswith("event: error\n")
    body = json.loads(text.split("data: ", 1)[1])
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert MESSAGES.sse_end() == ""


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (BadRequestError("x"), 400, "invalid_request_error"),
        (AuthenticationError("x"), 401, "authentication_error"),
        (NotFoundError("x"), 404, "not_found_error"),
        (PayloadTooLargeError("x"), 413, "request_too_large"),
        (RateLimitError("x"), 429, "rate_limit_error"),
        (FirstError("x"), 500, "api_error"),
        (UpstreamUnavailableError("x"), 529, "overloaded_error"),
    ],
)
def test_each_error_renders_in_anthropic_shape_with_its_status(
    exc: FirstError, status: int, kind: str
) -> None:
    assert exc.anthropic_status == status
    body = exc.to_anthropic_body()
    assert body == {"type": "error", "error": {"type": kind, "message": "x"}}
    jsonschema.validate(body, openapi.ANTHROPIC_ERROR_SCHEMA)


def call(method: str, path: str, body: bytes | None = b"{}", **headers: str) -> dict[str, Any]:
    gateway = LocalGateway(app, Config.create(chalice_app=app, app_name="t"))
    return gateway.handle_request(method=method, path=path, headers=headers, body=body)


def test_no_key_on_the_messages_route_is_an_anthropic_401_and_an_openai_one_elsewhere() -> None:
    response = call("POST", "/v1/messages", **{"Content-Type": "application/json"})
    assert response["statusCode"] == 401
    body = json.loads(response["body"])
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "x-api-key" in body["error"]["message"]
    other = call("POST", "/v1/chat/completions", **{"Content-Type": "application/json"})
    assert other["statusCode"] == 401
    assert set(json.loads(other["body"])["error"]) == {"message", "type", "param", "code"}


def test_what_chalice_answers_itself_on_the_messages_route_is_anthropic_shaped() -> None:
    response = call("GET", "/v1/messages", body=None)
    assert response["statusCode"] == 405
    body = json.loads(response["body"])
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_an_output_format_becomes_a_strict_json_schema_response_format() -> None:
    req = request(output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    assert req.to_chat().response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": WEATHER, "strict": True},
    }


def test_a_seed_passes_through_for_reproducible_samples() -> None:
    assert request(seed=3).to_chat().seed == 3


def test_the_websocket_action_reads_a_messages_body_as_chat_streamed_in_this_dialect() -> None:
    body = {
        "model": "m",
        "max_tokens": 8,
        "system": "s",
        "messages": [{"role": "user", "content": "hi"}],
        "stop_sequences": ["x"],
        "stream": True,
    }
    req = validate(body, MessagesAsChat)
    assert [m.role for m in req.messages] == ["system", "user"]
    stream = req.stream_dialect()
    assert stream["dialect"] == "messages"
    assert stream["state"]["model"] == "m" and stream["state"]["stop_sequences"] == ["x"]
    assert stream["state"]["id"].startswith("msg_")
    assert "messages_state" not in req.engine_body()


def test_a_system_turn_inside_the_conversation_stays_where_it_stands() -> None:
    # Claude Code 2.1 sends its environment as a system turn after the user's.
    req = request(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "env"}]},
        ]
    )
    assert [(m.role, m.content) for m in req.to_chat().messages] == [
        ("user", "hi"),
        ("system", "env"),
    ]


def test_image_blocks_become_chat_image_parts_in_their_place() -> None:
    """An image block is a chat ``image_url`` part (a data URL for base64), beside the turn's
    text in order, so chat's image rules and the model's vision capability decide."""
    body = {
        "model": "m",
        "max_tokens": 16,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.org/a.png"},
                    },
                ],
            }
        ],
    }
    chat = validate(body, MessagesRequest).to_chat()
    content = chat.model_dump(exclude_none=True)["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}},
    ]
    assert chat.capabilities_used().get("vision")
