"""The transformers engine's prompt-prefix cache: a conversation's next turn skips the prefill
of what it shares with an earlier one of the same salt, and answers exactly as without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpc_functions.engines.transformers_engine import TransformersEngine

TURN_1 = [
    {"role": "system", "content": "You are a patient assistant who answers about the sea."},
    {"role": "user", "content": "Tell me something about tides and the moon, in detail."},
]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> tuple[TransformersEngine, TransformersEngine]:
    config = {"kind": "transformers", "model": "tiny", "path": str(tiny_model_dir)}
    return TransformersEngine(config), TransformersEngine({**config, "prefix_cache_entries": 0})


def conversation(engine: TransformersEngine, salt: str | None) -> list[dict[str, Any]]:
    """Three greedy turns, each resending the whole conversation so far."""
    messages = list(TURN_1)
    answers = []
    for turn in range(3):
        body: dict[str, Any] = {"messages": messages, "max_tokens": 12, "temperature": 0}
        if salt is not None:
            body["cache_salt"] = salt
        answer = engine.chat_completions(body)
        answers.append(answer)
        text = answer["choices"][0]["message"]["content"]
        messages = [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"And then what happens, part {turn}?"},
        ]
    return answers


def texts(answers: list[dict[str, Any]]) -> list[str]:
    return [a["choices"][0]["message"]["content"] for a in answers]


def cached(answers: list[dict[str, Any]]) -> list[int]:
    return [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers]


def test_follow_up_turns_reuse_the_prefix_and_answer_the_same_greedy_tokens(
    engines: tuple[TransformersEngine, TransformersEngine],
) -> None:
    with_cache, without = engines
    reused = conversation(with_cache, "salt-a")
    plain = conversation(without, "salt-a")
    assert texts(reused) == texts(plain)
    assert cached(plain) == [0, 0, 0]
    assert cached(reused)[0] == 0
    # Each follow-up reuses at least the whole previous prompt.
    for i in (1, 2):
        assert cached(reused)[i] >= reused[i - 1]["usage"]["prompt_tokens"] - 1
        assert cached(reused)[i] < reused[i]["usage"]["prompt_tokens"]


def test_another_salt_reuses_nothing_and_no_salt_neither_reads_nor_reports(
    engines: tuple[TransformersEngine, TransformersEngine],
) -> None:
    engine = engines[0]
    conversation(engine, "salt-b")
    other = conversation(engine, "salt-c")
    assert cached(other)[0] == 0
    unsalted = engine.chat_completions({"messages": TURN_1, "max_tokens": 4, "temperature": 0})
    assert "prompt_tokens_details" not in unsalted["usage"]


def test_a_streamed_turn_reports_its_cached_tokens_too(
    engines: tuple[TransformersEngine, TransformersEngine],
) -> None:
    engine = engines[0]
    body = {"messages": TURN_1, "max_tokens": 6, "temperature": 0, "cache_salt": "salt-d"}
    plain = engine.chat_completions(body)
    chunks = list(engine.stream_chat_completions(body))
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == plain["usage"]["prompt_tokens"] - 1
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == plain["choices"][0]["message"]["content"]
