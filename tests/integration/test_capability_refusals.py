"""A request that needs what its model cannot do (tools on a vLLM deployment without a tool
parser, a JSON answer from an engine that cannot enforce it) is a 400 naming the field, before
anything is recorded or queued: never a field silently ignored, never a failed request later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.settings import REPO_ROOT
from tests.integration.pollers import poller_services

USER = Principal(id="alice", username="alice", kind="user")
PLAIN_VLLM = "lab/plain-vllm"
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


def registry_with_plain_vllm(tmp_path: Path) -> Path:
    registry = json.loads((REPO_ROOT / "infra" / "deployments" / "local.json").read_text())
    registry["endpoints"][0]["models"].append(
        {
            "model": PLAIN_VLLM,
            "owned_by": "lab",
            "endpoints": ["chat_completions"],
            "engine": {"kind": "vllm", "model": "lab/plain", "base_url": "http://127.0.0.1:1"},
        }
    )
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(registry))
    return path


def chat(model: str, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_tools_for_a_model_without_tool_support_are_a_400_naming_tools_and_nothing_queued(
    own_stage: str, tmp_path: Path
) -> None:
    services = poller_services(own_stage, registry_with_plain_vllm(tmp_path))
    with pytest.raises(BadRequestError) as refused:
        services.gateway.run(USER, "chat_completions", chat(PLAIN_VLLM, tools=[TOOL]))
    assert refused.value.param == "tools"
    assert refused.value.code == "tools_not_supported"
    assert PLAIN_VLLM in refused.value.message
    assert services.interactive_queue.depth() == 0
    # tool_choice "none" asks for no call: nothing the model must be able to do.
    assert chat(PLAIN_VLLM, tools=[TOOL], tool_choice="none").capabilities_used() == {}


def test_a_transformers_chat_model_is_let_through_with_tools_and_a_json_answer(
    own_stage: str, tmp_path: Path
) -> None:
    services = poller_services(own_stage, registry_with_plain_vllm(tmp_path))
    req = chat("first/tiny-chat", tools=[TOOL], response_format={"type": "json_object"})
    assert req.capabilities_used() == {"tools": "tools", "structured_outputs": "response_format"}
    services.gateway.authorize(USER, req, "chat_completions")  # raises nothing
    assert services.registry.supports(PLAIN_VLLM, "structured_outputs")
