"""Tools and structured outputs on the transformers engine, from the OpenAI request body it gets:
forced and named tool calls, ``tool_choice: none``, ``json_schema`` answers, conversations with
tool results, streamed tool calls and batch lines, on the tiny random-weight model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from hpc_functions.engines import get_engine, run_task
from hpc_functions.engines.base import EngineError
from hpc_functions.engines.throughput import run_many
from hpc_functions.engines.transformers_engine import TransformersEngine
from hpc_functions.streaming import Assembler, Coalescer, split_chunk

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "ping"}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MESSAGES = [{"role": "user", "content": "What is the weather in paris?"}]
ANSWER = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "a", "strict": True, "schema": ANSWER},
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"paris","unit":"c"}'},
}
CONVERSATION = [
    *MESSAGES,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny and 21"},
]


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path) -> dict[str, Any]:
    return {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)}


@pytest.fixture(scope="module")
def engine(config: dict[str, Any]) -> TransformersEngine:
    loaded = get_engine(config)
    assert isinstance(loaded, TransformersEngine)
    return loaded


def _chat(config: dict[str, Any], **body: Any) -> dict[str, Any]:
    result = run_task("chat_completions", {"request_id": "r", "engine": config, "body": body})
    assert "response" in result, result
    ChatCompletion.model_validate(result["response"])
    return dict(result["response"])


def _valid_calls(message: dict[str, Any]) -> list[str]:
    assert message["content"] is None and message["tool_calls"]
    parameters = {"get_weather": WEATHER, "ping": {"type": "object"}}
    for call in message["tool_calls"]:
        assert call["id"].startswith("call_") and call["type"] == "function"
        jsonschema.validate(
            json.loads(call["function"]["arguments"]), parameters[call["function"]["name"]]
        )
    return [c["function"]["name"] for c in message["tool_calls"]]


# ----- plain answers ----------------------------------------------------------------------


def test_a_required_tool_call_answers_with_valid_tool_calls_and_finish_reason_tool_calls(
    config: dict[str, Any],
) -> None:
    response = _chat(
        config, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=60, seed=1
    )
    [choice] = response["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert set(_valid_calls(choice["message"])) <= {"get_weather", "ping"}


def test_a_named_tool_choice_calls_that_tool_once_and_finishes_with_stop(
    config: dict[str, Any],
) -> None:
    # OpenAI answers a forced named function with finish_reason "stop" (required: "tool_calls").
    response = _chat(
        config,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice=NAMED,
        parallel_tool_calls=False,
        max_tokens=60,
        seed=2,
    )
    [choice] = response["choices"]
    assert choice["finish_reason"] == "stop"
    assert _valid_calls(choice["message"]) == ["get_weather"]


def test_tool_choice_none_answers_with_text_and_tells_the_model_of_no_call_format(
    config: dict[str, Any], engine: TransformersEngine
) -> None:
    body = {"messages": MESSAGES, "tools": TOOLS, "tool_choice": "none", "max_tokens": 8}
    response = _chat(config, **body, seed=3)
    [choice] = response["choices"]
    assert isinstance(choice["message"]["content"], str)
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "length"
    prepared = engine.prepare_chat(body)
    assert prepared.constraint is None
    assert "You can call these functions" not in (prepared.prompt_text or "")


def test_a_json_schema_answer_validates_and_json_object_is_an_object(
    config: dict[str, Any],
) -> None:
    response = _chat(
        config, messages=MESSAGES, response_format=JSON_SCHEMA, max_tokens=40, seed=4, n=2
    )
    for choice in response["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), ANSWER)
    response = _chat(
        config, messages=MESSAGES, response_format={"type": "json_object"}, max_tokens=30, seed=5
    )
    assert isinstance(json.loads(response["choices"][0]["message"]["content"]), dict)


# Claude Code's SendMessage tool: allOf, outside the strict subset (as Anthropic tools may be).
ALL_OF = {
    "type": "object",
    "properties": {"to": {"type": "string"}, "message": {"type": "string"}},
    "allOf": [{"required": ["to"]}, {"required": ["message"]}],
}


def test_a_non_strict_tool_outside_the_subset_is_called_with_a_json_object(
    config: dict[str, Any],
) -> None:
    tool = {"type": "function", "function": {"name": "send_message", "parameters": ALL_OF}}
    response = _chat(
        config, messages=MESSAGES, tools=[tool], tool_choice="required", max_tokens=40, seed=3
    )
    [choice] = response["choices"]
    assert choice["finish_reason"] == "tool_calls"
    for call in choice["message"]["tool_calls"]:
        assert call["function"]["name"] == "send_message"
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_a_strict_tool_outside_the_subset_is_a_400_naming_where(config: dict[str, Any]) -> None:
    tool = {
        "type": "function",
        "function": {"name": "send_message", "parameters": ALL_OF, "strict": True},
    }
    body = {"messages": MESSAGES, "tools": [tool]}
    result = run_task("chat_completions", {"request_id": "r", "engine": config, "body": body})
    assert result["status_code"] == 400 and result["error"]["param"] == "tools"
    assert "tools[0].function.parameters: 'allOf' is not supported" in result["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"not": {}}},
                }
            },
            "response_format",
        ),
        ({"functions": [{"name": "legacy"}]}, "functions"),
    ],
    ids=["unknown-named-tool", "bad-tool-name", "schema-outside-the-subset", "legacy-functions"],
)
def test_what_the_engine_cannot_serve_is_a_400_naming_the_field(
    config: dict[str, Any], body: dict[str, Any], param: str
) -> None:
    full = {"messages": MESSAGES, "tools": TOOLS, **body}
    result = run_task("chat_completions", {"request_id": "r", "engine": config, "body": full})
    assert result["status_code"] == 400 and result["error"]["param"] == param


# ----- conversations with tool calls and results ------------------------------------------


def test_a_conversation_with_a_tool_result_renders_the_call_and_the_result(
    config: dict[str, Any], engine: TransformersEngine
) -> None:
    body = {"messages": CONVERSATION, "tools": TOOLS, "max_tokens": 8, "seed": 6}
    prompt = engine.prepare_chat(body).prompt_text or ""
    # The tiny model's template cannot render tools: our format, in the system message and in
    # the assistant turn that called, and the tool's answer.
    assert prompt.index("You can call these functions") < prompt.index("paris?")
    call = '{"tool_calls":[{"name":"get_weather","arguments":{"city":"paris","unit":"c"}}]}'
    assert f"<|assistant|>: {call}\n<|tool|>: sunny and 21\n<|assistant|>:" in prompt
    _chat(config, **body)


def test_a_template_that_renders_tools_gets_them_and_the_call_ids(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tools-model"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{{ bos_token }}{% if tools %}<|tools|>: {{ tools | tojson }}\n{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>: {{ m['content'] }}"
        "{% for c in m.tool_calls or [] %}<call {{ c.id }} {{ c.function.name }} "
        "{{ c.function.arguments.city }}>{% endfor %}"
        "{% if m.tool_call_id %}<result of {{ m.tool_call_id }} {{ m.name }}>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>:{% endif %}"
    )
    engine = TransformersEngine({"kind": "transformers", "model": "tools", "path": str(model)})
    prompt = engine.prepare_chat({"messages": CONVERSATION, "tools": TOOLS}).prompt_text or ""
    assert '"name": "get_weather"' in prompt and "You can call these functions" not in prompt
    assert "<call call_1 get_weather paris>" in prompt
    assert "sunny and 21<result of call_1 get_weather>" in prompt


def test_a_tool_message_answering_no_call_is_a_400_naming_messages(
    config: dict[str, Any],
) -> None:
    messages = [*MESSAGES, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    body = {"messages": messages, "tools": TOOLS}
    result = run_task("chat_completions", {"request_id": "r", "engine": config, "body": body})
    assert result["status_code"] == 400 and result["error"]["param"] == "messages"
    assert "call_9" in result["error"]["message"]


# ----- streaming --------------------------------------------------------------------------


def _reassembled(chunks: list[dict[str, Any]]) -> Any:
    """The OpenAI SDK's own stream accumulator over the chunks."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


@pytest.mark.parametrize(
    ("tool_choice", "finish"),
    [("required", "tool_calls"), (NAMED, "stop")],
    ids=["required", "named"],
)
def test_a_streamed_tool_call_reassembles_into_the_plain_answer_s_call(
    engine: TransformersEngine, tool_choice: Any, finish: str
) -> None:
    body = {"messages": MESSAGES, "tools": TOOLS, "tool_choice": tool_choice, "max_tokens": 60}
    plain = engine.chat_completions({**body, "seed": 1})["choices"][0]
    chunks = list(engine.stream_chat_completions({**body, "seed": 1}))
    entries = [
        e for c in chunks if c["choices"] for e in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    # As OpenAI streams a call: id, type and name first with empty arguments, then pieces.
    assert entries[0]["id"].startswith("call_") and entries[0]["function"]["arguments"] == ""
    assert entries[0]["function"]["name"] == plain["message"]["tool_calls"][0]["function"]["name"]
    seen: set[int] = set()
    for entry in entries:  # a call's later entries carry only its index and argument pieces
        assert ("id" in entry) == (entry["index"] not in seen), entries
        assert "id" in entry or set(entry["function"]) == {"arguments"}
        seen.add(entry["index"])
    assert len(entries) > 3
    [choice] = _reassembled(chunks).choices
    assert choice.finish_reason == plain["finish_reason"] == finish
    streamed = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    expected = [
        (c["function"]["name"], c["function"]["arguments"]) for c in plain["message"]["tool_calls"]
    ]
    assert streamed == expected
    # The HPC function's coalescing and its stored (assembled) answer keep the same call.
    coalescer, assembler = Coalescer(flush_tokens=4, flush_s=60.0), Assembler()
    merged: list[dict[str, Any]] = []
    for chunk in chunks:
        assembler.add(chunk)
        coalescer.add(chunk)
        if coalescer.due(0.0):
            merged.extend(coalescer.take(0.0))
    merged.extend(coalescer.take(0.0))
    assert len(merged) < len(chunks)
    stored = assembler.response("chat_completions")["choices"][0]
    ChatCompletion.model_validate(assembler.response("chat_completions"))
    assert [
        (c["function"]["name"], c["function"]["arguments"]) for c in stored["message"]["tool_calls"]
    ] == expected
    assert stored["finish_reason"] == finish and stored["message"]["content"] is None
    [again] = _reassembled([*merged, chunks[-1]]).choices
    assert [
        (c.function.name, c.function.arguments) for c in again.message.tool_calls or []
    ] == expected


def test_a_streamed_json_schema_answer_is_the_plain_answer(engine: TransformersEngine) -> None:
    body = {"messages": MESSAGES, "response_format": JSON_SCHEMA, "max_tokens": 40, "seed": 8}
    plain = engine.chat_completions(body)["choices"][0]
    [choice] = _reassembled(list(engine.stream_chat_completions(body))).choices
    assert choice.message.content == plain["message"]["content"]
    jsonschema.validate(json.loads(choice.message.content or ""), ANSWER)


def test_a_tool_call_chunk_over_the_frame_limit_is_split_and_reassembles() -> None:
    arguments = json.dumps({"city": "x" * 5000})
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": arguments},
                        },
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
    }
    pieces = split_chunk(chunk, limit=2048)
    assert len(pieces) > 3 and all(
        len(json.dumps(p, separators=(",", ":"))) <= 2048 for p in pieces
    )
    assert [p["choices"][0]["finish_reason"] for p in pieces][-2:] == [None, "tool_calls"]
    [choice] = _reassembled(pieces).choices
    assert [
        (c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []
    ] == [
        ("call_a", "f", arguments),
        ("call_b", "g", "{}"),
    ]


# ----- batch lines ------------------------------------------------------------------------


def test_one_generate_call_serves_constrained_and_free_batch_lines(
    engine: TransformersEngine,
) -> None:
    # The tool-call object alone takes about 42 of the tiny tokenizer's tokens.
    base = {"messages": MESSAGES, "max_tokens": 56, "seed": 9}
    lines = [
        {**base, "response_format": JSON_SCHEMA},
        {**base, "tools": TOOLS, "tool_choice": NAMED},
        base,
    ]
    rows: list[int] = []
    generate = engine.model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)

    engine.model.generate = counted
    try:
        outcomes = run_many(engine, "chat_completions", lines)
    finally:
        del engine.model.generate  # the model's own method again
    assert rows == [3]  # the three lines, one forward pass per token
    assert not any(isinstance(o, EngineError) for o in outcomes)
    as_json, named, free = (o["choices"][0] for o in outcomes)  # type: ignore[index]
    jsonschema.validate(json.loads(as_json["message"]["content"]), ANSWER)
    assert _valid_calls(named["message"]) == ["get_weather"] and named["finish_reason"] == "stop"
    assert isinstance(free["message"]["content"], str) and "tool_calls" not in free["message"]
