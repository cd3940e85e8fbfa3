"""Embeddings through the OpenAI SDK on a real model (all-MiniLM-L6-v2, shipped on PyPI)."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest
from openai import OpenAI

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def test_similar_sentences_score_higher_than_unrelated(client: OpenAI) -> None:
    out = client.embeddings.create(
        model=MINILM,
        input=[
            "A cat sits on the mat.",
            "A kitten is resting on a rug.",
            "Quarterly tax filings are due in April.",
        ],
    )
    assert out.model == MINILM and out.usage.prompt_tokens > 0
    vectors = [d.embedding for d in sorted(out.data, key=lambda d: d.index)]
    assert all(len(v) == 384 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_batched_and_single_inputs_give_the_same_vectors(client: OpenAI) -> None:
    texts = ["Protein folding on GPUs", "Dark matter halos"]
    batch = client.embeddings.create(model=MINILM, input=texts).data
    for i, text in enumerate(texts):
        single = client.embeddings.create(model=MINILM, input=text).data[0].embedding
        assert max(abs(a - b) for a, b in zip(single, batch[i].embedding, strict=True)) < 1e-4


def test_base64_encoding_decodes_to_the_float_vector(client: OpenAI) -> None:
    floats = client.embeddings.create(model=MINILM, input="hello", encoding_format="float")
    raw = client.embeddings.with_raw_response.create(
        model=MINILM, input="hello", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{384}f", base64.b64decode(encoded))
    assert max(abs(a - b) for a, b in zip(decoded, floats.data[0].embedding, strict=True)) < 1e-6


def test_chat_model_refuses_embeddings_and_empty_input_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="first/tiny-chat", input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MINILM, input=[])
    assert info.value.param == "input"
