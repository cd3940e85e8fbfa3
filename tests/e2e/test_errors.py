"""Bad input and failures reach the SDK as OpenAI errors with the right class and status."""

from __future__ import annotations

import socket
import time

import openai
import pytest
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.conftest import BROKEN_MODEL, CORRUPT_MODEL, LAB_MODEL, TINY

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


def test_invalid_json_is_400(stack: BackgroundStack) -> None:
    r = requests.post(
        f"{stack.config.api_url}/v1/chat/completions",
        data=b"{nope",
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "JSON" in error["message"]


def test_missing_key_is_401(stack: BackgroundStack) -> None:
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
    # Within the model's max_tokens ceiling (its context window), but the prompt does not fit.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=32768)
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
    client: OpenAI, stack: BackgroundStack
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


def test_another_users_request_id_answers_404(client: OpenAI, stack: BackgroundStack) -> None:
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


def test_form_encoded_label_still_gets_an_openai_error_not_415(stack: BackgroundStack) -> None:
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


# ----- bad input: 400 naming the field, never a 500 (issue 7) --------------------------------


def post_raw(stack: BackgroundStack, path: str, body: bytes, **headers: str) -> requests.Response:
    """Bytes the SDK will not send (it refuses NaN and lone surrogates), as other clients do."""
    return requests.post(
        f"{stack.config.api_url}{path}",
        data=body,
        headers={
            "Authorization": f"Bearer {stack.api_key}",
            "Content-Type": "application/json",
            **headers,
        },
        timeout=30,
    )


def openai_error(r: requests.Response) -> dict[str, object]:
    assert r.headers["Content-Type"] == "application/json"
    error: dict[str, object] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_json_nested_a_thousand_deep_is_a_400(stack: BackgroundStack) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"x":%s}' % (
        TINY.encode(),
        deep,
    )
    r = post_raw(stack, "/v1/chat/completions", body)
    assert r.status_code == 400
    assert "deeper" in str(openai_error(r)["message"])


def test_a_seed_past_int64_is_a_400_naming_seed(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2, seed=2**63)
    assert info.value.param == "seed"


def test_nan_in_logit_bias_is_a_400(stack: BackgroundStack) -> None:
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"logit_bias":{"5":NaN}}'
    r = post_raw(stack, "/v1/chat/completions", body % TINY.encode())
    assert r.status_code == 400
    assert "finite" in str(openai_error(r)["message"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            b'{"model":"%s","messages":[{"role":"user","content":"\\ud800"}]}',
            "messages[0].content",
        ),
        ("/v1/completions", b'{"model":"%s","prompt":"x\\udfff"}', "prompt"),
        (
            "/v1/embeddings",
            b'{"model":"sentence-transformers/all-MiniLM-L6-v2","input":["ok","\\ud800"]}',
            "input[1]",
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(
    stack: BackgroundStack, path: str, body: bytes, param: str
) -> None:
    if b"%s" in body:
        body = body % TINY.encode()
    r = post_raw(stack, path, body)
    assert r.status_code == 400
    assert openai_error(r)["param"] == param


def test_too_many_stop_sequences_is_a_400_naming_stop(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=TINY, prompt="hi", stop=list("abcde"), max_tokens=2)
    assert info.value.param == "stop"


def test_too_many_prompts_times_choices_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=TINY, prompt=["hi"] * 9, n=16, max_tokens=2)
    assert info.value.param == "n"


def test_max_tokens_past_the_models_ceiling_is_a_400_naming_it(client: OpenAI) -> None:
    # The registry caps first/tiny-chat at 32768 completion tokens (its context window).
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=40000)
    assert info.value.param == "max_tokens" and info.value.code == "invalid_value"


# ----- routes ---------------------------------------------------------------------------------


def test_a_model_can_be_retrieved_by_its_id(client: OpenAI) -> None:
    model = client.models.retrieve(TINY)  # sent as /v1/models/first%2Ftiny-chat
    assert model.id == TINY and model.object == "model"
    listed = {m.id: m for m in client.models.list()}
    assert listed[TINY] == model


def test_a_model_id_with_a_literal_slash_in_the_path_works_too(stack: BackgroundStack) -> None:
    r = requests.get(
        f"{stack.config.api_url}/v1/models/{TINY}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["id"] == TINY


@pytest.mark.parametrize("model", ["no/such-model", LAB_MODEL])
def test_retrieving_a_missing_or_forbidden_model_is_404_model_not_found(
    client: OpenAI, model: str
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model)
    assert info.value.code == "model_not_found"


def test_a_member_of_the_models_group_can_retrieve_it(stack: BackgroundStack) -> None:
    from tests.e2e.conftest import LAB_GROUP, create_key

    key = create_key(stack, "lab-retriever", "--group", LAB_GROUP)
    member = OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=key, max_retries=0)
    assert member.models.retrieve(LAB_MODEL).id == LAB_MODEL


def test_an_unknown_route_is_an_openai_404(stack: BackgroundStack) -> None:
    r = requests.get(
        f"{stack.config.api_url}/v1/no-such-route",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"


def test_a_wrong_method_is_an_openai_405(stack: BackgroundStack) -> None:
    r = requests.get(
        f"{stack.config.api_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_a_wrong_content_type_is_an_openai_415(stack: BackgroundStack) -> None:
    r = post_raw(stack, "/v1/chat/completions", b"<xml/>", **{"Content-Type": "application/xml"})
    assert r.status_code == 415
    assert openai_error(r)["code"] == "unsupported_media_type"


def test_a_bad_content_length_is_an_openai_400_not_a_hang(stack: BackgroundStack) -> None:
    host, port = stack.config.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(request + b"Content-Length: -1\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 400")
