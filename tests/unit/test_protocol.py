"""Request bodies: what is accepted, and the 400 (with ``param``) for what is not."""

import json

import pytest

from chalicelib.errors import BadRequestError
from chalicelib.protocol import ChatCompletionRequest, CompletionRequest, parse_body


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_valid_chat_body_keeps_unknown_fields_for_the_engine() -> None:
    req = parse_body(
        body(model="m", messages=[{"role": "user", "content": "hi"}], top_k=5, stream=True),
        ChatCompletionRequest,
    )
    engine = req.engine_body()
    assert engine["top_k"] == 5
    assert "stream" not in engine
    assert engine["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (body(messages=[{"role": "user", "content": "x"}]), "model"),
        (body(model="m"), "messages"),
        (body(model="m", messages=[]), "messages"),
        (body(model="m", messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (
            body(model="m", messages=[{"role": "user", "content": "x"}], temperature=5),
            "temperature",
        ),
        (body(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=0), "max_tokens"),
        (body(model="m", messages=[{"role": "user", "content": "x"}], stop=list("abcde")), "stop"),
    ],
)
def test_invalid_chat_body_is_a_400_naming_the_field(raw: bytes, param: str | None) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_body(raw, ChatCompletionRequest)
    assert info.value.STATUS_CODE == 400
    assert info.value.param == param
    error = info.value.to_body()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_completion_prompt_may_be_text_or_tokens_but_not_empty() -> None:
    assert parse_body(body(model="m", prompt="hi"), CompletionRequest).prompt == "hi"
    assert parse_body(body(model="m", prompt=[[1, 2]]), CompletionRequest).prompt == [[1, 2]]
    with pytest.raises(BadRequestError) as info:
        parse_body(body(model="m", prompt=[]), CompletionRequest)
    assert info.value.param == "prompt"
