"""The interactive path through the real OpenAI SDK: models, chat, completions, streaming."""

from __future__ import annotations

import openai
from openai import OpenAI

from chalicelib.services import Services
from tests.e2e.conftest import TINY

HELLO = [{"role": "user", "content": "Hello there"}]


def test_models_list_shows_the_registry(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {TINY, "sentence-transformers/all-MiniLM-L6-v2"} <= ids


def test_chat_completion_round_trip_with_usage_and_request_id(
    client: OpenAI, services: Services
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=TINY, messages=HELLO, max_tokens=6, temperature=0
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == TINY
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 6
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    request_id = raw.headers["x-request-id"]
    assert float(raw.headers["x-first-engine-time-ms"]) > 0
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "completed" and record["attempt"] == 1
    assert record["owner"] == "dev"


def test_same_seed_same_text_and_n_choices(client: OpenAI) -> None:
    def ask(seed: int) -> list[str]:
        out = client.chat.completions.create(
            model=TINY, messages=HELLO, max_tokens=8, temperature=1.0, seed=seed, n=2
        )
        return [c.message.content or "" for c in out.choices]

    first = ask(7)
    assert len(first) == 2
    assert ask(7) == first


def test_streaming_chat_matches_the_plain_answer(client: OpenAI) -> None:
    params = {"model": TINY, "messages": HELLO, "max_tokens": 8, "temperature": 0}
    plain = client.chat.completions.create(**params)
    stream = client.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [plain.choices[0].finish_reason]
    # The same counts; of the prompt, the second run may find the first's prefix cached
    # (cached_tokens), so that detail may differ.
    last = chunks[-1].usage
    assert chunks[-1].choices == [] and last is not None and plain.usage is not None
    assert (last.prompt_tokens, last.completion_tokens, last.total_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
        plain.usage.total_tokens,
    )


def test_completions_plain_and_streamed(client: OpenAI) -> None:
    plain = client.completions.create(model=TINY, prompt="Once upon", max_tokens=5, temperature=0)
    assert plain.object == "text_completion" and plain.usage is not None
    assert plain.usage.completion_tokens <= 5
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=TINY, prompt="Once upon", max_tokens=5, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == plain.choices[0].text


def test_stop_sequence_ends_the_text_before_it(client: OpenAI) -> None:
    base = client.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=12, seed=3, temperature=1.0
    )
    words = (base.choices[0].message.content or "").split()
    assert len(words) >= 3
    stop = words[2]
    out = client.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=12, seed=3, temperature=1.0, stop=[stop]
    )
    assert out.choices[0].finish_reason == "stop"
    assert stop not in (out.choices[0].message.content or "")


def test_sdk_error_classes_for_auth(client: OpenAI) -> None:
    bad = client.with_options(api_key="sk-first-not-a-key")
    try:
        bad.models.list()
    except openai.AuthenticationError as exc:
        assert exc.status_code == 401
        assert exc.code == "invalid_api_key"
    else:
        raise AssertionError("a bad key was accepted")
