"""The Responses API through the whole stack, driven by the real OpenAI SDK (issue 20).

The tiny random-weight model writes lowercase noise, but under constrained decoding its tool
calls and JSON answers validate; what these tests check is the protocol: the response object,
stored state and its conversation chain, the stream events, the 400/404s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from first_cli.proxy import Proxy
from offline.background import BackgroundStack
from offline.stack import free_port
from tests.e2e.conftest import TINY, create_key
from tests.servers import serving

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True},
]


def test_a_plain_response_is_stored_retrieved_listed_and_deleted(client: OpenAI) -> None:
    made = client.responses.create(
        model=TINY, input="hello there", instructions="be brief", max_output_tokens=8
    )
    assert made.object == "response" and made.id.startswith("resp_")
    assert made.status in ("completed", "incomplete")
    assert made.output[0].type == "message" and made.output_text == made.output[0].content[0].text
    assert made.usage is not None and made.usage.output_tokens >= 1
    assert made.usage.total_tokens == made.usage.input_tokens + made.usage.output_tokens
    assert made.instructions == "be brief" and made.store is True
    again = client.responses.retrieve(made.id)
    assert again.model_dump() == made.model_dump()
    items = client.responses.input_items.list(made.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "hello there"  # type: ignore[union-attr]
    deleted = client.responses.delete(made.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_previous_response_id_rebuilds_the_conversation_in_the_gateway(client: OpenAI) -> None:
    first = client.responses.create(model=TINY, input="my name is ada", max_output_tokens=6)
    second = client.responses.create(
        model=TINY, input="what is my name?", previous_response_id=first.id, max_output_tokens=6
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The engine saw the first turn (its input and its answer) before the second question.
    alone = client.responses.create(model=TINY, input="what is my name?", max_output_tokens=6)
    assert alone.usage is not None
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.input_tokens
    # Input items list only the turn's own input.
    items = client.responses.input_items.list(second.id).data
    assert [i.content[0].text for i in items] == ["what is my name?"]  # type: ignore[union-attr]


def test_a_forced_function_tool_is_called_and_its_output_continues_the_turn(
    client: OpenAI,
) -> None:
    called = client.responses.create(
        model=TINY,
        input="weather in paris?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    (call,) = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    answered = client.responses.create(
        model=TINY,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=TOOLS,
        max_output_tokens=8,
    )
    assert answered.status in ("completed", "incomplete")


class Weather(BaseModel):
    city: str
    unit: str


def test_text_format_json_schema_answers_valid_json_and_parses(client: OpenAI) -> None:
    made = client.responses.create(
        model=TINY,
        input="weather?",
        text={"format": {"type": "json_schema", "name": "weather", "schema": WEATHER}},
        max_output_tokens=64,
    )
    jsonschema.validate(json.loads(made.output_text), WEATHER)
    parsed = client.responses.parse(
        model=TINY, input="weather?", text_format=Weather, max_output_tokens=64
    )
    assert isinstance(parsed.output_parsed, Weather)


def stream_events(client: OpenAI) -> tuple[list[str], Any]:
    # A JSON answer ends when its object closes: response.completed (a cut by max_output_tokens
    # ends with response.incomplete, which the SDK's get_final_response does not take).
    with client.responses.stream(
        model=TINY, input="weather?", text_format=Weather, max_output_tokens=64
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    return kinds, final


def test_responses_stream_over_rest_buffered_gives_openai_s_events(client: OpenAI) -> None:
    kinds, final = stream_events(client)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert (
        final.output_text and client.responses.retrieve(final.id).output_text == final.output_text
    )


def test_responses_stream_through_first_proxy(stack: BackgroundStack) -> None:
    proxy = Proxy(
        stack.config.api_url, stack.config.ws_url, stack.api_key, "127.0.0.1", free_port()
    )
    with serving(proxy):
        via = OpenAI(base_url=f"{proxy.url}/v1", api_key=stack.api_key, max_retries=0)
        kinds, final = stream_events(via)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") >= 1
    assert kinds[-1] == "response.completed"
    assert isinstance(final.output_parsed, Weather)


def test_a_background_response_is_queued_then_retrieved(client: OpenAI) -> None:
    made = client.responses.create(model=TINY, input="hello", max_output_tokens=4, background=True)
    assert made.status == "queued" and made.background is True
    deadline = time.monotonic() + 60
    got = made
    while got.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        got = client.responses.retrieve(made.id)
    assert got.status in ("completed", "incomplete") and got.output_text
    # A finished background response stays as it was when cancelled.
    assert client.responses.cancel(made.id).status == got.status


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"input": "hi", "temperature": 3}, 400, "temperature"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            400,
            "input",
        ),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_field(
    client: OpenAI, body: dict[str, Any], status: int, param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model=TINY, **body)
    assert caught.value.status_code == status
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_another_user_s_response_is_not_found_even_as_previous_response_id(
    stack: BackgroundStack, client: OpenAI
) -> None:
    mine = client.responses.create(model=TINY, input="secret", max_output_tokens=2)
    other = OpenAI(
        base_url=f"{stack.config.api_url}/v1",
        api_key=create_key(stack, "someone-else"),
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model=TINY, input="hi", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
