"""The Responses API as a dialect of chat (chalicelib/protocol/responses*.py), without I/O: the
translation both ways, its 400s naming the Responses field, and the stream events the OpenAI
SDK's own stream state accumulates into the same response."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from chalicelib.errors import BadRequestError
from chalicelib.protocol import dialects
from chalicelib.protocol import responses as rp
from chalicelib.protocol.responses_stream import RESPONSES, first_state

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def req(**body: Any) -> rp.ResponsesRequest:
    return rp.ResponsesRequest.model_validate({"model": "m", **body})


def chat_result(
    content: str | None, calls: list[dict[str, Any]] | None = None, finish: str = "stop"
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def test_instructions_items_tools_and_format_become_the_chat_request() -> None:
    r = req(
        instructions="be brief",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
        max_output_tokens=7,
    )
    chat = rp.to_chat(r).model_dump(exclude_none=True)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool"]
    assert chat["messages"][1]["content"] == "weather?"
    assert chat["messages"][2]["tool_calls"][0]["id"] == "c1"
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["response_format"]["json_schema"]["schema"] == WEATHER
    assert chat["max_tokens"] == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, "input"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"input": "hi", "tool_choice": {"type": "mcp"}}, "tool_choice"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_responses_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        rp.to_chat(req(**body))
    assert caught.value.param == param


def test_a_length_cut_answer_is_incomplete_with_its_reason() -> None:
    base = rp.skeleton(req(input="hi", max_output_tokens=4), "resp_1")
    out = rp.response_from_chat(base, chat_result("a b c d", finish="length"))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["usage"]["input_tokens"] == 5 and out["usage"]["total_tokens"] == 9


def sdk_final(body: str) -> Any:
    """The response the OpenAI SDK's ``responses.stream`` helper assembles from an SSE body."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)  # type: ignore[arg-type]
    numbers = []
    for block in body.strip().split("\n\n"):
        data = json.loads(block.split("data: ", 1)[1])
        numbers.append(data["sequence_number"])
        event = construct_type_unchecked(type_=ResponseStreamEvent, value=data)  # type: ignore[arg-type]
        state.handle_event(event)
    assert numbers == list(range(len(numbers)))
    return state._completed_response


@pytest.mark.parametrize(
    "result",
    [
        chat_result("the answer is here"),
        chat_result(
            None,
            [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a":1}'},
                }
            ],
            "tool_calls",
        ),
    ],
)
def test_the_buffered_stream_assembles_in_the_sdk_into_the_plain_response(
    result: dict[str, Any],
) -> None:
    base = rp.skeleton(req(input="hi"), "resp_1")
    body = dialects.render_buffered(RESPONSES, first_state(base), result)
    final = sdk_final(body)
    plain = rp.response_from_chat(base, result)
    assert final.id == plain["id"] and final.status == "completed"
    output = [item.to_dict() for item in final.output]
    for item in output:  # the SDK's own additions: what it parsed under text_format and tools
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    assert output == plain["output"]


def test_codex_s_request_translates_with_its_prompt_cache_key_for_affinity() -> None:
    # The fields Codex CLI 0.169 sends besides input and tools (captured from its request).
    body = {
        "stream": True,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "01a253f5-0ad6-7b02-a225-0ad2dfd67075",
        "client_metadata": {"turn_id": "t"},
        "tools": [{"type": "function", "name": "exec_command", "parameters": WEATHER}],
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "d"}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ],
    }
    chat = rp.to_chat(req(**body))
    assert chat.prompt_cache_key == "01a253f5-0ad6-7b02-a225-0ad2dfd67075"
    assert [m["role"] for m in chat.engine_body()["messages"]][-1] == "user"
