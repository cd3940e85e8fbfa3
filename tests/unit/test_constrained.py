"""Constrained decoding: what check_schema refuses, and what the tiny random-weight model writes
under a schema or tools (it always validates, whatever the seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.constrained import generate
from hpc_functions.engines.constrained import (
    ConstraintError,
    UnsupportedSchemaError,
    build_constraint,
    check_schema,
    check_tools,
    tools_instructions,
)
from hpc_functions.engines.schema_subset import MAX_ENUM_VALUES, MAX_SCHEMA_DEPTH, MAX_TOOLS
from hpc_functions.engines.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(
        {"kind": "transformers", "model": "tiny", "path": str(tiny_model_dir)}
    )


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": schema},
    }


def _tool(
    name: str, parameters: dict[str, Any] | None, *, strict: bool | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


WEATHER = _obj({"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}})
# Recursive, with its own $defs: refs must still resolve once embedded among other tools.
TREE = {
    "$defs": {
        "node": _obj(
            {
                "label": {"type": "string", "maxLength": 6},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            }
        )
    },
    **_obj({"root": {"$ref": "#/$defs/node"}, "depth": {"type": "integer", "minimum": 0}}),
}
TOOLS = [_tool("get_weather", WEATHER), _tool("draw_tree", TREE), _tool("ping", None)]
PARAMETERS = {"get_weather": WEATHER, "draw_tree": TREE, "ping": {"type": "object"}}


# ----- check_schema: OpenAI's subset is the contract --------------------------------------


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "items": {"type": "string"}}, '"type": "object" at its root'),
        (_obj({"a": {"allOf": [{"type": "string"}]}}), "'allOf' is not supported"),
        (_obj({"a": {"oneOf": [{"type": "string"}]}}), "'oneOf' is not supported"),
        (_obj({"a": {"not": {"type": "string"}}}), "'not' is not supported"),
        (_obj({"a": {"type": "string", "frobnicate": 1}}), "unknown keyword 'frobnicate'"),
        (_obj({"a": {"type": "string", "format": "bogus"}}), "format 'bogus'"),
        (_obj({"a": {"type": "string", "pattern": "(?=x)y"}}), "lookarounds"),
        (_obj({"a": {"type": "string", "pattern": "(unclosed"}}), "not a valid regular expression"),
        (_obj({"a": {"$ref": "https://example.org/s.json"}}), "only local refs"),
        (_obj({"a": {"$ref": "#/$defs/missing"}}), "points at nothing"),
        (_obj({"a": {"type": "array", "items": [{"type": "string"}]}}), "tuple items"),
        (_obj({"a": {"type": "string"}}, required=["a", "b"]), "required but not in properties"),
        (
            _obj({"a": {"type": "array", "minItems": 3, "maxItems": 1}}),
            "minItems is above maxItems",
        ),
        (_obj({"a": {"type": "integer", "multipleOf": 0}}), "above 0"),
        (_obj({"a": {"type": "date"}}), "must be one of"),
        (_obj({"a": True}), "a schema must be a JSON object"),
        ({**_obj({}), "x-guidance": {"lenient": True}}, "engine setting"),
        (_obj({"a": {"enum": list(range(MAX_ENUM_VALUES + 1))}}), "enum values"),
        (_obj({"a": {"type": "string", "description": "x" * 200_000}}), "bytes"),
    ],
)
def test_check_schema_refuses_what_it_cannot_enforce_naming_it(
    schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnsupportedSchemaError) as caught:
        check_schema(schema)
    assert named in caught.value.message
    assert caught.value.param == "response_format"
    assert isinstance(caught.value, ValueError)
    assert caught.value.to_result()["status_code"] == 400


def test_check_schema_refuses_nesting_past_the_bound() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH + 1):
        schema = {"type": "array", "items": schema}
    with pytest.raises(UnsupportedSchemaError, match="nested deeper"):
        check_schema(_obj({"a": schema}))


def test_check_schema_accepts_openai_strict_schemas_from_the_sdk() -> None:
    import openai
    from pydantic import BaseModel

    class Step(BaseModel):
        explanation: str
        output: str | None

    class Solution(BaseModel):
        steps: list[Step]
        final_answer: float
        kind: str = "math"

    tool = openai.pydantic_function_tool(Solution)
    check_schema(tool["function"]["parameters"])
    check_tools([tool], {"type": "function", "function": {"name": "Solution"}}, False)
    check_schema(TREE)  # recursion through $defs, annotations ignored
    check_schema({**WEATHER, "title": "w", "description": "d", "x-note": 1, "$schema": "x"})


@pytest.mark.parametrize(
    ("kwargs", "param", "named"),
    [
        ({"tools": [_tool("f", WEATHER)] * 2}, "tools", "two tools are named 'f'"),
        ({"tools": [_tool(f"f{i}", None) for i in range(MAX_TOOLS + 1)]}, "tools", "at most"),
        ({"tools": [_tool("bad name!", None)]}, "tools", "letters, digits"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools", "function"),
        (
            {"tools": [_tool("f", {"type": "object", "oneOf": []}, strict=True)]},
            "tools",
            "tools[0].function.parameters: 'oneOf' is not supported",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'nope', which is not among the tools",
        ),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "must be"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "true or false"),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": WEATHER}}},
            "response_format",
            "name",
        ),
        (
            {"response_format": _json_schema(_obj({"a": {"anyOf": []}}))},
            "response_format",
            "response_format.json_schema.schema.properties.a.anyOf",
        ),
    ],
)
def test_bad_tools_and_formats_are_refused_naming_the_field(
    kwargs: dict[str, Any], param: str, named: str
) -> None:
    with pytest.raises(UnsupportedSchemaError) as caught:
        build_constraint(**kwargs)
    assert caught.value.param == param
    assert named in caught.value.message


def test_no_constraint_for_text_or_tool_choice_none() -> None:
    assert build_constraint() is None
    assert build_constraint({"type": "text"}) is None
    assert build_constraint(tools=TOOLS, tool_choice="none") is None


# ----- generation: the tiny model's answers always validate ---------------------------------

_NAMES = st.sampled_from(["a", "b", "id", "name", "kind", "value", "ok", "items"])
_LEAVES = st.one_of(
    st.just({"type": "string"}),
    st.integers(0, 8).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "string", "pattern": "^[a-z]{2,4}$"}),
    st.just({"type": "string", "format": "date"}),
    st.just({"type": "integer"}),
    st.tuples(st.integers(-50, 50), st.integers(0, 100)).map(
        lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}
    ),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({"type": ["string", "null"]}),
    st.lists(
        st.sampled_from(["red", "green", "x_1", "7"]), min_size=1, max_size=3, unique=True
    ).map(lambda values: {"enum": values}),
    st.just({"const": "fixed"}),
)


def _objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_NAMES, children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: _obj(props, required)
        )
    )


_SCHEMAS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.tuples(children, st.integers(0, 2)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + 2}
        ),
        _objects(children),
        st.lists(children, min_size=2, max_size=2).map(lambda options: {"anyOf": options}),
    ),
    max_leaves=5,
)
# The root is an object; sometimes one property lives in $defs behind a $ref.
_ROOTS = st.tuples(_objects(_SCHEMAS), st.booleans()).map(
    lambda t: (
        {
            **t[0],
            "$defs": {"moved": t[0]["properties"][next(iter(t[0]["properties"]))]},
            "properties": {
                **t[0]["properties"],
                next(iter(t[0]["properties"])): {"$ref": "#/$defs/moved"},
            },
        }
        if t[1]
        else t[0]
    )
)


# Derandomized: the same ten schemas and seeds on every run. An unbounded string on the tiny
# random-weights model may run to max_tokens (finish "length"); drawn afresh each run, one such
# draw in a few hundred made CI red by chance, and a test must not flip on a coin.
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schema=_ROOTS, seed=st.integers(0, 2**31 - 1))
def test_constrained_answer_validates_against_any_schema(
    engine: TransformersEngine, schema: dict[str, Any], seed: int
) -> None:
    constraint = build_constraint(_json_schema(schema))
    [choice] = generate(engine, constraint, max_tokens=64, seed=seed)
    assert choice.finish_reason == "stop", choice
    assert choice.output.content is not None
    jsonschema.validate(json.loads(choice.output.content), schema)


def test_json_object_is_one_json_object_for_every_seed(engine: TransformersEngine) -> None:
    constraint = build_constraint({"type": "json_object"})
    for choice in generate(engine, constraint, max_tokens=32, seed=7, n=2):
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.output.content or ""), dict)


def _assert_valid_calls(calls: list[dict[str, Any]] | None) -> list[str]:
    assert calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        arguments = json.loads(call["function"]["arguments"])
        jsonschema.validate(arguments, PARAMETERS[call["function"]["name"]])
    return [c["function"]["name"] for c in calls]


def test_required_tool_calls_validate_against_their_parameters(engine: TransformersEngine) -> None:
    constraint = build_constraint(tools=TOOLS, tool_choice="required")
    names = set()
    for seed in range(2):
        for choice in generate(engine, constraint, max_tokens=80, seed=seed):
            assert choice.finish_reason == "stop" and choice.output.content is None
            assert choice.output.finish_reason == "tool_calls"
            names.update(_assert_valid_calls(choice.output.tool_calls))
    assert names <= set(PARAMETERS)


@pytest.mark.parametrize("name", ["draw_tree", "ping"])
def test_named_tool_choice_always_calls_that_tool_once(
    engine: TransformersEngine, name: str
) -> None:
    choice_of = {"type": "function", "function": {"name": name}}
    constraint = build_constraint(tools=TOOLS, tool_choice=choice_of, parallel_tool_calls=False)
    for choice in generate(engine, constraint, max_tokens=64, seed=3, n=2):
        assert _assert_valid_calls(choice.output.tool_calls) == [name]


def test_auto_gives_text_or_valid_tool_calls(engine: TransformersEngine) -> None:
    constraint = build_constraint(tools=TOOLS, tool_choice="auto")
    for choice in generate(engine, constraint, max_tokens=16, seed=5, n=3):
        if choice.output.tool_calls is None:
            assert not (choice.output.content or "").startswith("{")
        else:
            _assert_valid_calls(choice.output.tool_calls)


def test_auto_with_a_schema_gives_tool_calls_or_a_valid_answer(engine: TransformersEngine) -> None:
    answer = _obj({"ok": {"type": "boolean"}})
    constraint = build_constraint(_json_schema(answer), tools=TOOLS[:1], tool_choice="auto")
    for choice in generate(engine, constraint, max_tokens=48, seed=11, n=2):
        assert choice.finish_reason == "stop"
        if choice.output.tool_calls is None:
            jsonschema.validate(json.loads(choice.output.content or ""), answer)
        else:
            _assert_valid_calls(choice.output.tool_calls)


def test_one_generate_call_mixes_rows_with_different_constraints(
    engine: TransformersEngine,
) -> None:
    answer = _obj({"ok": {"type": "boolean"}, "n": {"type": "integer"}})
    rows = [
        build_constraint(_json_schema(answer)),
        build_constraint(
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "ping"}}
        ),
        None,
    ]
    as_json, as_tool, free = generate(engine, rows, max_tokens=40, seed=4)
    jsonschema.validate(json.loads(as_json.output.content or ""), answer)
    assert _assert_valid_calls(as_tool.output.tool_calls) == ["ping"]
    assert free.output.tool_calls is None


def test_a_schema_the_vocabulary_cannot_write_is_a_constraint_error(
    engine: TransformersEngine,
) -> None:
    # The tiny model's tokenizer is BERT's WordPiece: no token writes a space.
    constraint = build_constraint(_json_schema(_obj({"unit": {"enum": ["deg c"]}})))
    with pytest.raises(ConstraintError) as caught:
        generate(engine, constraint, max_tokens=16)
    assert caught.value.param == "response_format"
    assert caught.value.to_result()["status_code"] == 400


@pytest.fixture(scope="module")
def bpe_engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    """A tiny random model on a byte-level BPE tokenizer (as most real models have), trained here:
    it writes capitals and spaces, which the tiny offline model's lowercase WordPiece cannot."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ['{"unit": "Celsius", "city": "Paris"}', "The Weather in Paris is sunny."] * 20
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("models") / "bpe"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return TransformersEngine({"kind": "transformers", "model": "bpe", "path": str(out)})


def test_byte_level_bpe_model_writes_capitals_and_valid_tool_calls(
    bpe_engine: TransformersEngine,
) -> None:
    schema = _obj({"unit": {"enum": ["Celsius", "Fahrenheit"]}, "note": {"type": "string"}})
    constraint = build_constraint(_json_schema(schema))
    for choice in generate(bpe_engine, constraint, max_tokens=48, seed=2, n=2):
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.output.content or ""), schema)
    constraint = build_constraint(tools=TOOLS[:1], tool_choice="required")
    [choice] = generate(bpe_engine, constraint, max_tokens=64, seed=2)
    assert _assert_valid_calls(choice.output.tool_calls) == ["get_weather"]


def test_tools_instructions_name_every_tool_and_the_output_format() -> None:
    text = tools_instructions(TOOLS)
    assert all(json.dumps(name) in text for name in PARAMETERS)
    assert '{"tool_calls": [{"name": ' in text
