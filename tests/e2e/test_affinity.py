"""Conversations stay on the endpoint that holds their prefix (issue 22), on the local stack's
two clusters: follow-up turns go home, the homes spread, and a stopped home moves its
conversation at once, with no error, to stay there."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from openai import OpenAI

from offline.background import BackgroundStack
from tests.e2e.conftest import TINY
from tests.e2e.test_durability import wait_for
from tests.e2e.test_federation import online

CONVERSATIONS, TURNS = 16, 4


def turn(client: OpenAI, messages: list[dict[str, Any]], key: str) -> tuple[str, str, str]:
    """One turn: (endpoint that ran it, request id, answer text)."""
    raw = client.chat.completions.with_raw_response.create(
        model=TINY, messages=messages, max_tokens=6, temperature=0, prompt_cache_key=key
    )
    assert raw.http_response.status_code == 200
    answer = raw.parse()
    return (
        str(raw.headers["x-first-endpoint"]),
        str(raw.headers["x-request-id"]),
        answer.choices[0].message.content or "",
    )


def conversation(client: OpenAI, key: str, turns: int = TURNS) -> list[str]:
    """``turns`` turns of one conversation, each resending it all; the endpoint of each."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Conversation {key} starts."}]
    where = []
    for i in range(turns):
        endpoint, _, text = turn(client, messages, key)
        where.append(endpoint)
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"Turn {i + 1} of {key}: go on."},
        ]
    return where


def test_follow_up_turns_go_home_and_homes_spread(client: OpenAI) -> None:
    # Two at a time: under local-b's two slots, so no home is ever full (a full home is left,
    # by design, and that conversation moves).
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: conversation(client, f"conv-{i}"), range(CONVERSATIONS)))
    follow_ups = [(run[0], later) for run in runs for later in run[1:]]
    at_home = sum(first == later for first, later in follow_ups)
    assert at_home >= 0.9 * len(follow_ups), runs
    homes = Counter(run[0] for run in runs)
    assert set(homes) == {"local-a", "local-b"}, homes
    assert max(homes.values()) <= 0.8 * CONVERSATIONS, homes


def test_the_record_names_the_endpoint_that_ran_it(client: OpenAI, stack: BackgroundStack) -> None:
    endpoint, request_id, _ = turn(client, [{"role": "user", "content": "Where?"}], "where")
    view = requests.get(
        f"{stack.config.api_url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=10,
    ).json()
    assert view["compute_endpoint"] == endpoint


def test_a_stopped_home_moves_its_conversation_at_once_and_it_stays_moved(
    client: OpenAI, stack: BackgroundStack
) -> None:
    key = next(
        f"moving-{i}" for i in range(64) if conversation(client, f"moving-{i}", 1) == ["local-b"]
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Conversation {key} starts."}]
    assert turn(client, messages, key)[0] == "local-b"
    try:
        assert stack.first("local", "endpoint", "stop", "local-b") == "local-b stopped"
        # The next turn, sent at once (the router may not know yet): answered, elsewhere.
        assert turn(client, messages, key)[0] == "local-a"
        assert turn(client, messages, key)[0] == "local-a"
    finally:
        stack.first("local", "endpoint", "start", "local-b")
    wait_for(lambda: online(stack).get("local-b") == "online", 30, "local-b back online")
    # local-b is back, but the conversation moved once and stays where its prefix now is.
    assert [turn(client, messages, key)[0] for _ in range(3)] == ["local-a"] * 3
