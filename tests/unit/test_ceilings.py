"""The per-model ceiling on completion tokens, read from the registry entry."""

from __future__ import annotations

import json

import pytest

from chalicelib.ceilings import check_max_tokens
from chalicelib.errors import BadRequestError
from chalicelib.protocol import ChatCompletionRequest, CompletionRequest, parse_body
from chalicelib.registry import DEFAULT_MAX_TOKENS, Registry
from chalicelib.settings import REPO_ROOT


def registry(**model: object) -> Registry:
    entry = {"model": "m", "endpoints": ["chat_completions"], "engine": {"kind": "x"}, **model}
    return Registry.from_dict({"endpoints": [{"name": "e", "endpoint_id": "e", "models": [entry]}]})


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_body(json.dumps(body).encode(), ChatCompletionRequest)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_asking_for_more_tokens_than_the_model_allows_is_a_400_naming_the_field(
    param: str,
) -> None:
    deployment = registry(max_tokens=512).model("m")
    with pytest.raises(BadRequestError) as info:
        check_max_tokens(deployment, chat(**{param: 513}))
    assert info.value.param == param
    assert info.value.code == "invalid_value"
    assert "512" in info.value.message


def test_up_to_the_ceiling_or_no_max_tokens_at_all_passes() -> None:
    deployment = registry(max_tokens=512).model("m")
    check_max_tokens(deployment, chat(max_tokens=512, max_completion_tokens=512))
    check_max_tokens(deployment, chat())


def test_a_model_without_a_ceiling_gets_the_default() -> None:
    deployment = registry().model("m")
    assert deployment is not None and deployment.max_tokens == DEFAULT_MAX_TOKENS
    with pytest.raises(BadRequestError):
        check_max_tokens(deployment, chat(max_tokens=DEFAULT_MAX_TOKENS + 1))


def test_completions_are_checked_too_and_an_unknown_model_is_left_to_authorization() -> None:
    body = json.dumps({"model": "m", "prompt": "p", "max_tokens": 100}).encode()
    req = parse_body(body, CompletionRequest)
    with pytest.raises(BadRequestError):
        check_max_tokens(registry(max_tokens=99).model("m"), req)
    check_max_tokens(None, req)


def test_the_local_tiny_model_is_capped_at_its_context_window() -> None:
    reg = Registry.load(REPO_ROOT / "infra" / "deployments" / "local.json", {"FIRST_HOME": "/x"})
    deployment = reg.model("first/tiny-chat")
    assert deployment is not None and deployment.max_tokens == 32768
