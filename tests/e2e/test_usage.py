"""GET /v1/usage on the running stack: what the SDK spent is counted, for its caller only."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from openai import OpenAI

from offline.background import BackgroundStack
from tests.e2e.conftest import TINY, create_key
from tests.e2e.test_durability import wait_for

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "Hello"}]


def usage(stack: BackgroundStack, key: str, **params: Any) -> requests.Response:
    return requests.get(
        f"{stack.config.api_url}/v1/usage",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_users_requests_are_counted_and_nobody_elses_are_visible(
    stack: BackgroundStack,
) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    alice_key, bob_key = create_key(stack, alice), create_key(stack, bob)
    start = int(time.time()) - 1
    sdk = OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=alice_key, max_retries=0)
    spent = [
        sdk.chat.completions.create(model=TINY, messages=HELLO, max_tokens=4).usage
        for _ in range(2)
    ]
    prompt = sum(u.prompt_tokens for u in spent if u is not None)
    completion = sum(u.completion_tokens for u in spent if u is not None)
    assert prompt > 0 and completion > 0

    def counted() -> dict[str, Any] | None:
        body: dict[str, Any] = usage(stack, alice_key, start=start, group_by="model").json()
        return body if body["totals"]["requests"] == 2 else None

    # Written off the request's path (the poller's background writer, within about a second).
    body = wait_for(counted, 20, "alice's two requests in her usage")
    assert body["totals"] == {
        "requests": 2,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "errors": 0,
        "cancelled": 0,
    }
    assert [(b["model"], b["requests"]) for b in body["data"]] == [(TINY, 2)]
    assert body["user"] == alice

    # Bob sees none of it, and may not ask for Alice's or everyone's.
    assert usage(stack, bob_key, start=start).json()["totals"]["requests"] == 0
    for params in ({"user": alice}, {"group_by": "user"}):
        refused = usage(stack, bob_key, start=start, **params)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"

    # The operator (the stack's dev key) sees everyone's, by user, and one user's.
    by_user = usage(stack, stack.api_key, start=start, group_by="user").json()
    assert {b["user"]: b["requests"] for b in by_user["data"]}.get(alice) == 2
    assert usage(stack, stack.api_key, start=start, user=alice).json()["totals"] == body["totals"]


def test_responses_and_messages_calls_are_counted_under_their_own_routes(
    stack: BackgroundStack,
) -> None:
    user = f"dialects-{uuid.uuid4().hex[:6]}"
    key = create_key(stack, user)
    start = int(time.time()) - 1
    sdk = OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=key, max_retries=0)
    sdk.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    sdk.responses.create(model=TINY, input="Hello", max_output_tokens=2)
    sdk.responses.create(model=TINY, input="Hello", max_output_tokens=2, store=False)
    message = requests.post(
        f"{stack.config.api_url}/v1/messages",
        json={"model": TINY, "max_tokens": 2, "messages": HELLO},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=60,
    )
    assert message.status_code == 200, message.text

    def counted() -> dict[str, Any] | None:
        body: dict[str, Any] = usage(stack, key, start=start, group_by="function").json()
        return body if body.get("totals", {}).get("requests") == 4 else None

    body = wait_for(counted, 20, "the four calls in the user's usage")
    by_route = {b["function"]: b["requests"] for b in body["data"]}
    assert by_route == {"chat_completions": 1, "messages": 1, "responses": 2}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "1.5"}, "end"),
        ({"start": "200", "end": "100"}, "end"),
        ({"start": "0", "end": str(40 * 24 * 3600)}, "start"),
        ({"group_by": "endpoint"}, "group_by"),
    ],
)
def test_bad_parameters_are_openai_400s_naming_the_param(
    stack: BackgroundStack, params: dict[str, str], param: str
) -> None:
    response = usage(stack, stack.api_key, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def emf(stack: BackgroundStack, process: str, metric: str) -> list[dict[str, Any]]:
    """The EMF documents in a process's log (its stdout) that carry ``metric``."""
    docs = []
    for name in stack.config.logs.glob(f"{process}*.log"):
        for line in name.read_text(errors="replace").splitlines():
            if '"_aws"' in line and f'"{metric}"' in line:
                docs.append(json.loads(line))
    return docs


def test_the_api_and_poller_write_emf_metrics_to_their_logs(
    stack: BackgroundStack, client: OpenAI
) -> None:
    client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)
    # The API flushes as it answers; the poller every FIRST_METRICS_FLUSH_INTERVAL_S (1 s here).
    api = wait_for(lambda: emf(stack, "api", "ApiLatency"), 10, "the API's EMF")
    assert any(d.get("model") == TINY and d["route"] == "/v1/chat/completions" for d in api)
    done = wait_for(
        lambda: [d for d in emf(stack, "poller", "EngineTime") if d.get("model") == TINY],
        10,
        "the poller's EMF",
    )
    (directive,) = done[-1]["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "FIRST"
    assert sorted(directive["Dimensions"][0]) == ["deployment", "model", "service"]
    assert done[-1]["service"] == "first-poller"
