"""Bad bodies that once answered 500 (or ran away in an engine) are 400s naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from chalicelib.errors import BadRequestError
from chalicelib.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_body,
)
from chalicelib.protocol.bounds import (
    MAX_JSON_DEPTH,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_PROMPTS,
    MAX_SEQUENCES,
    MAX_STOP_CHARS,
)
from chalicelib.protocol.common import nesting_depth

HELLO = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": HELLO, **fields}).encode()


def refused(raw: bytes, model: type[BaseModel] = ChatCompletionRequest) -> BadRequestError:
    with pytest.raises(BadRequestError) as info:
        parse_body(raw, model)
    assert info.value.STATUS_CODE == 400
    assert set(info.value.to_body()["error"]) == {"message", "type", "param", "code"}
    return info.value


def nested(depth: int) -> bytes:
    return b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":%s1%s}' % (
        b"[" * depth,
        b"]" * depth,
    )


def test_json_nested_a_thousand_deep_is_a_400_not_a_recursion_error() -> None:
    error = refused(nested(5000))
    assert str(MAX_JSON_DEPTH) in error.message


def test_json_nested_just_past_the_depth_limit_is_refused_and_just_under_accepted() -> None:
    # The body's own object is one level; "x" adds one per bracket.
    refused(nested(MAX_JSON_DEPTH))
    assert parse_body(nested(MAX_JSON_DEPTH - 1), ChatCompletionRequest).model == "m"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[[[[{{{{" * 100, "b": ['\\"[[', "]"]})
    assert nesting_depth(text) == 2
    assert parse_body(chat(stop="[" * 200), ChatCompletionRequest).stop == "[" * 200


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30])
def test_seed_outside_int64_is_a_400_naming_seed(seed: int) -> None:
    assert refused(chat(seed=seed)).param == "seed"


def test_seed_at_the_int64_bounds_is_accepted() -> None:
    assert parse_body(chat(seed=2**63 - 1), ChatCompletionRequest).seed == 2**63 - 1
    assert parse_body(chat(seed=-(2**63)), ChatCompletionRequest).seed == -(2**63)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_anywhere_are_a_400(number: bytes) -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"5":%s}}'
    error = refused(raw % number)
    assert "finite" in error.message


@pytest.mark.parametrize(
    ("raw", "model", "param"),
    [
        (
            b'{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}]}',
            ChatCompletionRequest,
            "messages[0].content",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"text",'
            b'"text":"\\udfff"}]}]}',
            ChatCompletionRequest,
            "messages[0].content[0].text",
        ),
        (b'{"model":"m","prompt":["ok","\\udc00"]}', CompletionRequest, "prompt[1]"),
        (b'{"model":"m","prompt":"\\ud83d"}', CompletionRequest, "prompt"),
        (b'{"model":"m","input":["ok","x\\ud800"]}', EmbeddingRequest, "input[1]"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(
    raw: bytes, model: type[BaseModel], param: str
) -> None:
    error = refused(raw, model)
    assert error.param == param
    assert "surrogate" in error.message


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}'
    req = parse_body(raw, ChatCompletionRequest)
    assert req.messages[0].content == "\U0001f600"


def test_a_body_that_is_not_utf8_is_a_400() -> None:
    refused(b'{"model":"m","messages":[{"role":"user","content":"\xff"}]}')


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
        ({"stop": ["ok", "x" * (MAX_STOP_CHARS + 1)]}, "stop"),
        ({"n": 17}, "n"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_completion_tokens": 2**31}, "max_completion_tokens"),
        ({"logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": -100.5}}, "logit_bias"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"tools": [{"type": "function"}] * 129}, "tools"),
        ({"top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_chat_fields_past_their_ceiling_are_a_400_naming_them(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(chat(**fields)).param == param


def test_too_many_messages_is_a_400_naming_messages() -> None:
    body = {"model": "m", "messages": HELLO * (MAX_MESSAGES + 1)}
    assert refused(json.dumps(body).encode()).param == "messages"
    body["messages"] = HELLO * MAX_MESSAGES
    assert len(parse_body(json.dumps(body).encode(), ChatCompletionRequest).messages) == 2048


def test_chat_fields_at_their_ceiling_are_accepted() -> None:
    req = parse_body(
        chat(
            stop=["a", "b", "c", "x" * MAX_STOP_CHARS],
            n=16,
            logit_bias={str(i): (100 if i % 2 else -100) for i in range(MAX_LOGIT_BIAS)},
        ),
        ChatCompletionRequest,
    )
    assert req.n == 16 and req.logit_bias is not None and len(req.logit_bias) == 300


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["p"] * (MAX_PROMPTS + 1)}, "prompt"),
        ({"prompt": [[1, 2]] * (MAX_PROMPTS + 1)}, "prompt"),
        ({"prompt": [1, 2**31]}, "prompt"),
        ({"prompt": [[1], [-1]]}, "prompt"),
        ({"prompt": ["p"] * 9, "n": 16}, "n"),
        ({"prompt": ["p"] * 7, "best_of": 20}, "n"),
        ({"prompt": "p", "best_of": 21}, "best_of"),
        ({"prompt": "p", "logprobs": 6}, "logprobs"),
        ({"prompt": "p", "stop": list("abcde")}, "stop"),
        ({"prompt": "p", "seed": 2**64}, "seed"),
    ],
)
def test_completion_fields_past_their_ceiling_are_a_400_naming_them(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(completion(**fields), CompletionRequest).param == param


def test_prompts_times_choices_up_to_the_sequence_limit_are_accepted() -> None:
    rows = MAX_SEQUENCES // 16
    req = parse_body(completion(prompt=["p"] * rows, n=16), CompletionRequest)
    assert req.rows() == rows
    # One prompt of many token ids is one row, not many.
    assert parse_body(completion(prompt=list(range(500)), n=16), CompletionRequest).rows() == 1


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[1, 2**31]]}, "input"),
        ({"input": "x", "dimensions": 10**9}, "dimensions"),
    ],
)
def test_embedding_fields_past_their_ceiling_are_a_400_naming_them(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(completion(**fields), EmbeddingRequest).param == param


def test_a_union_field_of_the_wrong_shape_names_the_field_not_the_union_member() -> None:
    assert refused(completion(prompt=[{"a": 1}]), CompletionRequest).param == "prompt"


# ----- tools, tool_choice, response_format and tool turns (issue 19) ----------------------

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def tool(
    name: str = "get_weather", parameters: Any = WEATHER, *, strict: bool | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"a": schema}}


def json_schema(schema: Any, name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("fields", "param", "named"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools", "'web_search'"),
        ({"tools": [tool("get weather")]}, "tools", "letters, digits"),
        ({"tools": [tool("x" * 65)]}, "tools", "letters, digits"),
        ({"tools": [tool(f"f{i}") for i in range(129)]}, "tools", "128"),
        (
            {"tools": [tool(parameters={"type": "object", "oneOf": []}, strict=True)]},
            "tools",
            "oneOf",
        ),
        ({"tools": [tool(parameters=deep(17), strict=True)]}, "tools", "nested deeper than 16"),
        ({"tools": [tool(parameters=["not", "a", "schema"])]}, "tools", "must be a JSON object"),
        (
            {"tools": [tool(parameters={"type": "object", "allOf": [{}]}, strict=True)]},
            "tools",
            "tools[0].function.parameters: 'allOf' is not supported",
        ),
        ({"tools": [tool(strict="yes")]}, "tools", "strict must be true or false"),
        (
            {"tools": [tool(parameters={**WEATHER, "description": "x" * 200_000})]},
            "tools",
            "bytes",
        ),
        (
            {"tools": [tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'nope', which is not among the tools",
        ),
        ({"tools": [tool()], "tool_choice": "always"}, "tool_choice", "must be"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [tool()], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "boolean"),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format.type"),
        ({"response_format": json_schema(WEATHER, name="a b")}, "response_format", "name"),
        (
            {"response_format": json_schema({"type": "object", "not": {}})},
            "response_format",
            "'not' is not supported",
        ),
        ({"response_format": json_schema({"type": "array"})}, "response_format", "root"),
        ({"response_format": json_schema(deep(17))}, "response_format", "nested deeper"),
    ],
)
def test_tools_and_formats_the_engines_cannot_enforce_are_400s_naming_the_field(
    fields: dict[str, Any], param: str, named: str
) -> None:
    error = refused(chat(**fields))
    assert error.param == param
    assert named in error.message


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([{"role": "tool", "tool_call_id": "call_1", "content": "20"}], "answers no tool call"),
        (
            [
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_2", "content": "20"},
            ],
            "'call_2' answers no tool call",
        ),
        ([{"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "20"}], "needs"),
        ([{"role": "user", "content": "hi", "tool_calls": [CALL]}], "only assistant"),
    ],
)
def test_tool_turns_that_answer_no_earlier_call_are_400s_naming_messages(
    messages: list[dict[str, Any]], named: str
) -> None:
    raw = json.dumps({"model": "m", "messages": messages}).encode()
    error = refused(raw)
    assert error.param == "messages"
    assert named in error.message


def test_a_tool_call_whose_arguments_are_an_object_is_refused_naming_the_message() -> None:
    call = {**CALL, "function": {"name": "get_weather", "arguments": {"city": "paris"}}}
    raw = json.dumps({"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}]})
    assert refused(raw.encode()).param == "messages[0].tool_calls[0].function.arguments"


def test_a_whole_tool_conversation_with_strict_tools_and_a_schema_is_accepted() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "20"},
    ]
    raw = chat(
        tools=[tool(), tool("ping", None)],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format=json_schema(WEATHER),
    )
    req = parse_body(
        raw.replace(
            b'"messages": ' + json.dumps(HELLO).encode(),
            b'"messages": ' + json.dumps(messages).encode(),
        ),
        ChatCompletionRequest,
    )
    body = req.engine_body()
    assert body["parallel_tool_calls"] is False
    assert body["messages"][1]["tool_calls"] == [CALL]
    assert body["messages"][2]["tool_call_id"] == "call_1"
    assert body["response_format"]["json_schema"]["strict"] is True
