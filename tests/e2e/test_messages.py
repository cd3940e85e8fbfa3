"""Anthropic's Messages API through the whole stack, driven by the real ``anthropic`` SDK (issue 21).

The tiny random-weight model answers greedily (``temperature: 0``), so a Messages call and the same
conversation sent as chat write the same text; under constrained decoding a forced ``tool_use``
validates against its ``input_schema``. Errors come back as the SDK's own exception classes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic import Anthropic
from anthropic.types import MessageParam, ToolParam
from openai import OpenAI

from first_cli.proxy import Proxy
from offline.background import BackgroundStack
from offline.stack import free_port
from tests.e2e.conftest import LIMITED_USER, TINY, create_key
from tests.e2e.test_vision import VISION, image_bytes
from tests.servers import serving

pytestmark = pytest.mark.e2e

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ToolParam] = [
    {"name": "get_weather", "description": "the weather in a city", "input_schema": WEATHER}
]
TURNS: list[MessageParam] = [
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi there"},
    {"role": "user", "content": [{"type": "text", "text": "tell me more"}]},
]
SYSTEM = "you answer briefly"
# The SDK no longer names the sampling fields; the API still takes them (older clients send them).
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}


def claude(stack: BackgroundStack, key: str | None = None, **options: Any) -> Anthropic:
    return Anthropic(
        base_url=stack.config.api_url,
        api_key=key or stack.api_key,
        max_retries=0,
        **options,
    )


@pytest.fixture(scope="module")
def sdk(stack: BackgroundStack) -> Anthropic:
    return claude(stack)


def chat_text(client: OpenAI, max_tokens: int) -> str:
    chat = client.chat.completions.create(
        model=TINY,
        messages=[{"role": "system", "content": SYSTEM}, *TURNS],  # type: ignore[list-item]
        max_tokens=max_tokens,
        temperature=0,
    )
    return chat.choices[0].message.content or ""


def test_create_with_system_and_turns_writes_what_chat_writes(
    sdk: Anthropic, client: OpenAI
) -> None:
    message = sdk.messages.create(
        model=TINY, system=SYSTEM, messages=TURNS, max_tokens=12, **GREEDY
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == TINY
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    text = "".join(b.text for b in message.content if b.type == "text")
    assert text == chat_text(client, 12)


def test_a_stop_sequence_ends_the_text_and_is_named(sdk: Anthropic) -> None:
    # A seeded sample (chat's seed, a gateway extra) writes words; greedy output is punctuation.
    params: dict[str, Any] = {
        "model": TINY,
        "messages": TURNS,
        "max_tokens": 24,
        "extra_body": {"temperature": 1.0, "seed": 3},
    }
    full = text_of(sdk.messages.create(**params))
    words = [w for w in full.split() if w.isalpha()]
    assert len(words) >= 3, full
    stop = words[2]
    message = sdk.messages.create(**params, stop_sequences=[stop, "never-in-output"])
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == stop
    assert text_of(message) == full[: full.index(stop)]


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def forced_tool_use(sdk: Anthropic) -> anthropic.types.Message:
    return sdk.messages.create(
        model=TINY,
        messages=[{"role": "user", "content": "weather in paris?"}],
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=64,
        **GREEDY,
    )


def test_a_forced_tool_use_validates_against_its_input_schema(sdk: Anthropic) -> None:
    message = forced_tool_use(sdk)
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id
    jsonschema.validate(uses[0].input, WEATHER)


def test_an_output_format_answers_json_that_validates(sdk: Anthropic) -> None:
    message = sdk.messages.create(
        model=TINY,
        messages=[{"role": "user", "content": "weather in paris as json"}],
        output_config={"format": {"type": "json_schema", "schema": WEATHER}},
        max_tokens=64,
        **GREEDY,
    )
    text = "".join(b.text for b in message.content if b.type == "text")
    jsonschema.validate(json.loads(text), WEATHER)


def test_a_tool_result_round_trip_is_answered(sdk: Anthropic) -> None:
    first = forced_tool_use(sdk)
    use = next(b for b in first.content if b.type == "tool_use")
    answer = sdk.messages.create(
        model=TINY,
        messages=[
            {"role": "user", "content": "weather in paris?"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 c"},
                ],
            },
        ],
        tools=TOOLS,
        max_tokens=8,
        **GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens > first.usage.input_tokens


def test_streamed_final_message_equals_the_plain_one(sdk: Anthropic) -> None:
    params: dict[str, Any] = {
        "model": TINY,
        "system": SYSTEM,
        "messages": TURNS,
        "max_tokens": 12,
        "extra_body": {"temperature": 0},
    }
    plain = sdk.messages.create(**params)
    with sdk.messages.stream(**params) as stream:
        final = stream.get_final_message()
    assert text_of(final) == text_of(plain) and text_of(plain)
    assert final.stop_reason == plain.stop_reason
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_a_streamed_tool_use_carries_its_input(sdk: Anthropic) -> None:
    with sdk.messages.stream(
        model=TINY,
        messages=[{"role": "user", "content": "weather in paris?"}],
        tools=TOOLS,
        tool_choice={"type": "any"},
        max_tokens=64,
        **GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = next(b for b in final.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER)


def test_streaming_through_first_proxy_gives_the_same_message(
    stack: BackgroundStack, sdk: Anthropic
) -> None:
    params: dict[str, Any] = {"model": TINY, "messages": TURNS, "max_tokens": 8, **GREEDY}
    plain = sdk.messages.create(**params)
    tool_params: dict[str, Any] = {
        "model": TINY,
        "messages": [{"role": "user", "content": "weather in paris?"}],
        "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "max_tokens": 64,
        **GREEDY,
    }
    proxy = Proxy(stack.config.api_url, stack.config.ws_url, None, "127.0.0.1", free_port())
    with serving(proxy):
        # Live over the WebSocket API (the messages action), the key from x-api-key.
        proxied = Anthropic(base_url=proxy.url, api_key=stack.api_key, max_retries=0)
        with proxied.messages.stream(**params) as stream:
            final = stream.get_final_message()
        with proxied.messages.stream(**tool_params) as stream:
            called = stream.get_final_message()
        missing = {**params, "model": "first/no-such-model"}
        with pytest.raises(anthropic.NotFoundError), proxied.messages.stream(**missing) as stream:
            stream.get_final_message()
    assert text_of(final) == text_of(plain) and text_of(plain)
    assert final.stop_reason == plain.stop_reason and final.id.startswith("msg_")
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert called.stop_reason == "tool_use"
    use = next(b for b in called.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER)


def test_bearer_auth_and_unknown_betas_are_accepted(stack: BackgroundStack) -> None:
    # Claude Code sends ANTHROPIC_AUTH_TOKEN as Authorization: Bearer, with beta flags.
    bearer = Anthropic(
        base_url=stack.config.api_url,
        auth_token=stack.api_key,
        max_retries=0,
        default_headers={"anthropic-beta": "made-up-2099-01-01,another-beta"},
    )
    message = bearer.messages.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert message.type == "message"


def test_count_tokens_counts_what_create_is_charged(sdk: Anthropic) -> None:
    params: dict[str, Any] = {"model": TINY, "system": SYSTEM, "messages": TURNS}
    counted = sdk.messages.count_tokens(**params)
    created = sdk.messages.create(**params, max_tokens=2)
    assert counted.input_tokens == created.usage.input_tokens > 0


def test_errors_are_the_sdk_s_own_classes(stack: BackgroundStack, sdk: Anthropic) -> None:
    hi: list[MessageParam] = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="first/no-such-model", messages=hi, max_tokens=2)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        claude(stack, "not-a-key").messages.create(model=TINY, messages=hi, max_tokens=2)
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(
            model=TINY,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
            max_tokens=2,
        )
    # An image block to a text-only model: chat's image rules decide, in Anthropic's shape.
    assert "does not support images (messages[0].content[0])" in bad.value.message
    limited = claude(stack, create_key(stack, LIMITED_USER))
    with pytest.raises(anthropic.RateLimitError) as refused:
        for _ in range(5):  # two a minute (tests/e2e/conftest.py)
            limited.messages.create(model=TINY, messages=hi, max_tokens=2)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_an_image_block_is_answered_by_the_vision_model(sdk: Anthropic) -> None:
    """Anthropic's image block (base64 source) reaches the vision model as chat's image part."""
    data = base64.b64encode(image_bytes()).decode()
    message = sdk.messages.create(
        model=VISION,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "How many cells?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": data},
                    },
                ],
            }
        ],
        max_tokens=4,
    )
    assert message.type == "message" and message.model == VISION
    assert message.stop_reason in ("end_turn", "max_tokens")
    # The prompt held the image's tokens, not just the text.
    text_only = sdk.messages.count_tokens(
        model=VISION, messages=[{"role": "user", "content": "How many cells?"}]
    )
    assert message.usage.input_tokens > text_only.input_tokens
