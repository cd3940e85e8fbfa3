"""Bad input and failures reach the SDK as OpenAI errors with the right class and status."""

from __future__ import annotations

import time

import openai
import pytest
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.stack import Stack
from tests.e2e.conftest import BROKEN_MODEL, CORRUPT_MODEL, TINY

HELLO = [{"role": "user", "content": "Hello"}]


def test_missing_field_is_400_with_param(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=[])
    assert info.value.status_code == 400
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"


def test_out_of_range_field_is_400_naming_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=HELLO, temperature=9)
    assert info.value.param == "temperature"


def test_invalid_json_is_400(stack: Stack) -> None:
    r = requests.post(
        f"{stack.config.api_url}/v1/chat/completions",
        data=b"{nope",
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "JSON" in error["message"]


def test_missing_key_is_401(stack: Stack) -> None:
    r = requests.get(f"{stack.config.api_url}/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no/such-model", messages=HELLO)
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_oversized_body_is_413(client: OpenAI) -> None:
    huge = "x " * (6 * 1024 * 1024 // 2 + 10)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": huge}])
    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"


def test_context_overflow_is_the_engines_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=100_000)
    assert info.value.code == "context_length_exceeded"


def test_engine_failure_is_500_with_the_request_id(client: OpenAI, services: Services) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=CORRUPT_MODEL, messages=HELLO, max_tokens=4)
    assert info.value.status_code == 500 and info.value.code == "engine_error"
    body = info.value.body
    assert isinstance(body, dict) and body["request_id"].startswith("req_")
    assert info.value.response.headers["x-request-id"] == body["request_id"]
    record = services.requests.get(body["request_id"])
    assert record is not None and record["status"] == "failed" and record["status_code"] == 500


def test_model_that_cannot_load_is_503_with_the_request_id(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=BROKEN_MODEL, messages=HELLO, max_tokens=4)
    assert info.value.status_code == 503
    body = info.value.body
    assert isinstance(body, dict) and body["request_id"].startswith("req_")


def test_wait_exceeded_is_504_and_the_result_can_be_fetched_later(
    client: OpenAI, stack: Stack
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=TINY,
            messages=HELLO,
            max_tokens=1500,
            extra_headers={"Prefer": "wait=0"},
        )
    assert info.value.status_code == 504
    request_id = info.value.response.headers["x-request-id"]
    assert isinstance(info.value.body, dict) and info.value.body["request_id"] == request_id
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    url = f"{stack.config.api_url}/v1/requests/{request_id}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = requests.get(url, headers=headers).json()
        if view["status"] == "completed":
            break
        time.sleep(0.2)
    assert view["status"] == "completed"
    assert view["result"]["object"] == "chat.completion"
    assert view["result"]["usage"]["completion_tokens"] > 0


def test_another_users_request_id_answers_404(client: OpenAI, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(model=TINY, messages=HELLO, max_tokens=2)
    request_id = raw.headers["x-request-id"]
    from tests.e2e.conftest import create_key

    other = create_key(stack, "mallory")
    r = requests.get(
        f"{stack.config.api_url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {other}"},
    )
    assert r.status_code == 404
    mine = requests.get(
        f"{stack.config.api_url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )
    assert mine.status_code == 200 and mine.json()["status"] == "completed"


def test_form_encoded_label_still_gets_an_openai_error_not_415(stack: Stack) -> None:
    r = requests.post(
        f"{stack.config.api_url}/v1/chat/completions",
        data=b"model=x",
        headers={
            "Authorization": f"Bearer {stack.api_key}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
