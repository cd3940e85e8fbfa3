"""Tools and structured outputs through the whole stack, driven by the real clients (issue 19).

The tiny random-weight model answers under constrained decoding, so what it writes validates
against the schema asked for: forced and required tool calls, the same call streamed over REST
and the WebSocket API, ``chat.completions.parse`` into a pydantic model, ``json_object``, a
conversation that carries tool results, and the 400s the API gives before anything is queued.
(The tiny tokenizer writes no capitals or whitespace: field names and values are lowercase.)
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel

from chalicelib.services import Services
from first_cli.client import StreamClient, StreamError
from first_cli.proxy import Proxy
from offline.background import BackgroundStack
from offline.stack import free_port
from tests.e2e.conftest import TINY
from tests.e2e.test_batch import submit, wait
from tests.servers import serving

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER, "strict": True},
    },
    {
        "type": "function",
        "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
    },
]
PARAMETERS = {"get_weather": WEATHER, "ping": {"type": "object"}}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather in paris?"}]
NAMED: ChatCompletionNamedToolChoiceParam = {
    "type": "function",
    "function": {"name": "get_weather"},
}


def valid_calls(calls: Any) -> list[tuple[str, str]]:
    """(name, arguments) of each call, after checking the arguments against its parameters."""
    out = []
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
        out.append((call.function.name, call.function.arguments))
    return out


def test_a_named_tool_choice_forces_that_call_with_valid_arguments(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TINY, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=64, seed=1
    )
    choice = completion.choices[0]
    # As OpenAI answers a forced named function: "stop" ("required" gives "tool_calls").
    assert choice.finish_reason == "stop"
    assert choice.message.content is None
    assert [name for name, _ in valid_calls(choice.message.tool_calls)] == ["get_weather"]


def test_tool_choice_required_calls_some_tool_every_time(client: OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.create(
            model=TINY, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=96, seed=seed
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert valid_calls(choice.message.tool_calls)


def test_a_streamed_tool_call_accumulates_into_the_plain_answer_s_call(
    client: OpenAI, stack: BackgroundStack
) -> None:
    params: dict[str, Any] = {
        "model": TINY,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": NAMED,
        "max_tokens": 64,
        "temperature": 0,
        "seed": 5,
    }
    plain = client.chat.completions.create(**params)
    expected = valid_calls(plain.choices[0].message.tool_calls)

    # REST stream=true (buffered SSE), accumulated by the SDK's own stream helper.
    with client.chat.completions.stream(**params) as stream:
        rest = stream.get_final_completion()
    assert rest.choices[0].finish_reason == plain.choices[0].finish_reason
    assert valid_calls(rest.choices[0].message.tool_calls) == expected

    # The WebSocket API: live deltas, accumulated the same way.
    state = ChatCompletionStreamState()
    with StreamClient(stack.config.ws_url, stack.api_key) as ws:
        for chunk in ws.stream_chat(**params):
            state.handle_chunk(chunk)  # built as the SDK builds its own stream's chunks
    live = state.get_final_completion()
    assert live.choices[0].finish_reason == plain.choices[0].finish_reason
    assert valid_calls(live.choices[0].message.tool_calls) == expected


def test_a_tool_call_streamed_through_first_proxy_is_the_plain_answer_s_call(
    client: OpenAI, stack: BackgroundStack
) -> None:
    params: dict[str, Any] = {
        "model": TINY,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 64,
        "temperature": 0,
        "seed": 7,
    }
    expected = valid_calls(client.chat.completions.create(**params).choices[0].message.tool_calls)
    proxy = Proxy(
        stack.config.api_url, stack.config.ws_url, stack.api_key, "127.0.0.1", free_port()
    )
    with serving(proxy):
        sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key=stack.api_key, max_retries=0)
        # The proxy streams live deltas from the WebSocket API; the SDK's helper accumulates them.
        with sdk.chat.completions.stream(**params) as stream:
            proxied = stream.get_final_completion()
    assert proxied.choices[0].finish_reason == "tool_calls"
    assert valid_calls(proxied.choices[0].message.tool_calls) == expected


def test_batch_lines_with_a_json_schema_and_tools_answer_under_their_constraints(
    client: OpenAI,
) -> None:
    forecast = {
        "type": "json_schema",
        "json_schema": {"name": "forecast", "schema": Forecast.model_json_schema()},
    }
    bodies: list[dict[str, Any]] = [
        {"model": TINY, "messages": ASK, "max_tokens": 48, "response_format": forecast},
        {"model": TINY, "messages": ASK, "max_tokens": 64, "tools": TOOLS, "tool_choice": NAMED},
        {"model": TINY, "messages": ASK, "max_tokens": 8},
    ]
    rows = [
        {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    done = wait(client, submit(client, data).id)
    assert done.status == "completed" and done.output_file_id is not None
    lines = {
        x["custom_id"]: x["response"]["body"]
        for x in map(json.loads, client.files.content(done.output_file_id).text.splitlines())
    }
    Forecast.model_validate_json(lines["l0"]["choices"][0]["message"]["content"])
    calls = lines["l1"]["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), WEATHER)
    assert lines["l2"]["choices"][0]["message"]["content"] is not None


class Forecast(BaseModel):
    city: str
    sunny: bool
    unit: Literal["c", "f"]


def test_parse_with_a_pydantic_model_gives_that_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=TINY, messages=ASK, response_format=Forecast, max_tokens=64, seed=2
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Forecast)
    assert Forecast.model_validate_json(message.content or "") == message.parsed


def test_json_object_answers_one_json_object(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=TINY,
        messages=ASK,
        response_format={"type": "json_object"},
        max_tokens=64,
        seed=4,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_a_conversation_carrying_a_tool_result_is_answered(client: OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"paris","unit":"c"}'},
    }
    messages: list[ChatCompletionMessageParam] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    completion = client.chat.completions.create(
        model=TINY, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert completion.choices[0].message.content
    assert not completion.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "object", "not": {}}},
                }
            },
            "response_format",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "call_9", "content": "x"}]}, "messages"),
    ],
)
def test_what_no_engine_can_enforce_is_a_400_naming_the_field_before_anything_is_queued(
    client: OpenAI, services: Services, fields: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": TINY, "messages": ASK, "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param  # type: ignore[index]
    # Refused at the API: no request id, no record (an engine's refusal has both, failed).
    request_id = caught.value.response.headers.get("x-request-id")
    assert request_id is None or services.requests.get(request_id) is None


def langchain_model(stack: BackgroundStack) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=TINY,
        base_url=f"{stack.config.api_url}/v1",
        api_key=stack.api_key,
        max_retries=0,
        max_tokens=64,
        temperature=0,
        seed=3,
    )


def test_langchain_bind_tools_gets_a_call_with_parsed_arguments(stack: BackgroundStack) -> None:
    bound = langchain_model(stack).bind_tools([TOOLS[0]], tool_choice="get_weather")
    message = bound.invoke("weather in paris?")
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    jsonschema.validate(message.tool_calls[0]["args"], WEATHER)
    assert message.tool_calls[0]["id"]


def test_langchain_with_structured_output_gives_the_pydantic_model(stack: BackgroundStack) -> None:
    structured = langchain_model(stack).with_structured_output(Forecast)
    assert isinstance(structured.invoke("weather in paris?"), Forecast)


def test_litellm_completion_with_tools_gets_the_call(
    stack: BackgroundStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM fetches its model price list over the network at import unless told to use its own.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    response = litellm.completion(
        model=f"openai/{TINY}",
        api_base=f"{stack.config.api_url}/v1",
        api_key=stack.api_key,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=96,
        seed=1,
        num_retries=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert valid_calls(choice.message.tool_calls)


def test_the_websocket_api_refuses_the_same_at_the_door(stack: BackgroundStack) -> None:
    bad_choice = {"type": "function", "function": {"name": "nope"}}
    with (
        StreamClient(stack.config.ws_url, stack.api_key) as ws,
        pytest.raises(StreamError) as caught,
    ):
        list(ws.stream_chat(model=TINY, messages=ASK, tools=TOOLS, tool_choice=bad_choice))
    assert caught.value.status == 400
    assert caught.value.error["param"] == "tool_choice"
    assert caught.value.request_id is None
