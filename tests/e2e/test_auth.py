"""Authorization, isolation and rate limits, seen from clients of the running stack."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.conftest import LAB_GROUP, LAB_MODEL, LIMITED_USER, TINY, create_key

HELLO = [{"role": "user", "content": "Hello"}]
RATE_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


def sdk(stack: BackgroundStack, key: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=key, max_retries=0)


def test_over_the_limit_is_429_rate_limit_error_with_headers(
    stack: BackgroundStack, services: Services
) -> None:
    client = sdk(stack, create_key(stack, LIMITED_USER))
    answered = []
    with pytest.raises(openai.RateLimitError) as info:
        # Two a minute; should a minute roll over mid-test, the window restarts once.
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model=TINY, messages=HELLO, max_tokens=2
            )
            answered.append(raw.headers)
    assert answered, "the first request must be admitted"
    assert all(name in answered[0] for name in RATE_HEADERS)
    assert answered[0]["x-ratelimit-limit-requests"] == "2"
    assert answered[0]["x-ratelimit-remaining-requests"] == "1"
    refused = info.value
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    headers = refused.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert all(name in headers for name in RATE_HEADERS)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # The poller gave every finished request's concurrency slot back.
    table = services.dynamodb.Table(services.settings.limits_table_name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        item = table.get_item(Key={"pk": f"user#{LIMITED_USER}#inflight"}, ConsistentRead=True)
        if int(item["Item"]["inflight"]) == 0:
            break
        time.sleep(0.1)
    assert int(item["Item"]["inflight"]) == 0


def test_unlimited_users_get_no_rate_limit_headers(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=TINY, messages=HELLO, max_tokens=2)
    assert not any(name in raw.headers for name in RATE_HEADERS)


def test_a_model_outside_your_groups_is_unlisted_and_answers_model_not_found(
    stack: BackgroundStack, client: OpenAI
) -> None:
    assert LAB_MODEL not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError) as hidden:
        client.chat.completions.create(model=LAB_MODEL, messages=HELLO, max_tokens=2)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="first/no-such-model", messages=HELLO, max_tokens=2)
    # Indistinguishable from a model that does not exist.
    assert hidden.value.code == missing.value.code == "model_not_found"
    assert hidden.value.message.replace(LAB_MODEL, "X") == missing.value.message.replace(
        "first/no-such-model", "X"
    )
    member = sdk(stack, create_key(stack, "lab-member", "--group", LAB_GROUP))
    assert LAB_MODEL in {m.id for m in member.models.list()}
    reply = member.chat.completions.create(model=LAB_MODEL, messages=HELLO, max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def _a_request(client: OpenAI) -> str:
    # `user` in the body is informational: it must not make the request anyone else's.
    raw = client.chat.completions.with_raw_response.create(
        model=TINY, messages=HELLO, max_tokens=2, user="intruder"
    )
    return f"/v1/requests/{raw.headers['x-request-id']}"


def _a_file(client: OpenAI) -> str:
    data = b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}\n'
    return client.files.create(file=("a.jsonl", data), purpose="batch").id


def _a_batch(client: OpenAI) -> str:
    return client.batches.create(
        input_file_id=_a_file(client), endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def _a_running_batch(client: OpenAI) -> str:
    # A batch long enough to still be running when the owner's cancel comes right after the
    # intruder's (a one-line batch may already have finished, and a finished batch cannot be
    # cancelled).
    line = {"model": TINY, "messages": HELLO, "max_tokens": 1}
    data = "".join(
        json.dumps(
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": line}
        )
        + "\n"
        for i in range(300)
    ).encode()
    file_id = client.files.create(file=("long.jsonl", data), purpose="batch").id
    batch_id = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    return f"/v1/batches/{batch_id}/cancel"


def _a_job(client: OpenAI, steps: int = 1) -> str:
    body = {"function": "first/sleep-steps", "input": {"steps": steps, "step_s": 0.1}}
    job: Any = client.post("/jobs", body=body, cast_to=object)
    return f"/v1/jobs/{job['id']}"


def _a_response(client: OpenAI) -> str:
    return client.responses.create(model=TINY, input="Hello", max_output_tokens=2).id


def _a_background_response(client: OpenAI) -> str:
    made = client.responses.create(model=TINY, input="Hello", max_output_tokens=2, background=True)
    return f"/v1/responses/{made.id}/cancel"


# Every route that takes an id, and how to make an object its owner can fetch. A new id route
# (batches, files, …) fails the walk below until it is added here.
OWNED_OBJECTS: dict[str, Callable[[OpenAI], str]] = {
    "/v1/requests/{request_id}": _a_request,
    "/v1/files/{file_id}": lambda c: f"/v1/files/{_a_file(c)}",
    "/v1/files/{file_id}/content": lambda c: f"/v1/files/{_a_file(c)}/content",
    "/v1/batches/{batch_id}": lambda c: f"/v1/batches/{_a_batch(c)}",
    "/v1/batches/{batch_id}/cancel": _a_running_batch,
    "/v1/jobs/{job_id}": _a_job,
    # Long enough to be running when the owner's cancel comes (it stops it).
    "/v1/jobs/{job_id}/cancel": lambda c: f"{_a_job(c, steps=300)}/cancel",
    "/v1/responses/{response_id}": lambda c: f"/v1/responses/{_a_response(c)}",
    "/v1/responses/{response_id}/input_items": (
        lambda c: f"/v1/responses/{_a_response(c)}/input_items"
    ),
    "/v1/responses/{response_id}/cancel": _a_background_response,
}
# Id routes of objects nobody owns: who may see a model is decided by its access rule (groups),
# tested with the hidden model in test_a_model_outside_your_groups_is_unlisted_and_answers_model_not_found.
SHARED_ROUTES = {
    "/v1/models/{model}",
    "/v1/models/{model}/{name}",
    "/v1/models/{model}/warm",
    "/v1/models/{model}/{name}/warm",
    # The operator page's static scripts and styles: the same files for everyone, no data.
    "/dashboard/{name}",
}


def test_every_id_route_answers_404_to_anyone_but_the_owner(
    stack: BackgroundStack, client: OpenAI
) -> None:
    from app import app

    routes = [
        (path, method)
        for path, entry in app.routes.items()
        if "{" in path and path not in SHARED_ROUTES
        for method in entry
    ]
    assert routes, "no id routes found"
    untested = sorted({path for path, _ in routes} - set(OWNED_OBJECTS))
    assert not untested, f"id routes without an isolation case: {untested}"
    owner = {"Authorization": f"Bearer {stack.api_key}"}
    intruder = {"Authorization": f"Bearer {create_key(stack, 'intruder')}"}
    for path, method in routes:
        url = stack.config.api_url + OWNED_OBJECTS[path](client)
        # The intruder goes first: a DELETE or cancel of theirs that acted would show below.
        theirs = requests.request(method, url, headers=intruder)
        assert theirs.status_code == 404, (method, path)
        assert theirs.json()["error"]["type"] == "invalid_request_error"
        if method == "DELETE":
            assert requests.get(url, headers=owner).status_code == 200, ("still there", path)
        if path.endswith("/cancel"):
            batch = requests.get(url.removesuffix("/cancel"), headers=owner).json()
            assert batch["status"] not in ("cancelling", "cancelled"), ("cancelled by", path)
        assert requests.request(method, url, headers=owner).status_code == 200, (method, path)
