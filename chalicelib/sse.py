"""Render a finished OpenAI response as a ``text/event-stream`` body.

Over plain HTTP (a Lambda returns one body) ``stream=true`` is buffered: the whole completion is
computed, then sent as the chunk sequence the OpenAI SDK parses: a role chunk, content chunks,
a finish chunk per choice, the usage chunk when ``stream_options.include_usage``, ``[DONE]``.
Live token streams go over the WebSocket API instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

# Split after whitespace so each chunk carries a word and its trailing space, as engines do.
_PIECES = re.compile(r"\S+\s*|\s+")


def _pieces(text: str) -> list[str]:
    return _PIECES.findall(text) or [""]


def _event(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def chat_chunks(response: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk",
        "created": response["created"],
        "model": response["model"],
    }
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    for choice in response["choices"]:
        idx = choice["index"]
        yield chunk(idx, {"role": "assistant", "content": ""}, None)
        for piece in _pieces(choice["message"].get("content") or ""):
            if piece:
                yield chunk(idx, {"content": piece}, None)
        yield chunk(idx, {}, choice["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": response.get("usage")}


def completion_chunks(response: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = {
        "id": response["id"],
        "object": "text_completion",
        "created": response["created"],
        "model": response["model"],
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    for choice in response["choices"]:
        for piece in _pieces(choice.get("text") or ""):
            if piece:
                yield chunk(choice["index"], piece, None)
        yield chunk(choice["index"], "", choice["finish_reason"])
    if include_usage:
        yield {**base, "choices": [], "usage": response.get("usage")}


def render(response: dict[str, Any], include_usage: bool) -> str:
    chunks = (
        chat_chunks(response, include_usage)
        if response.get("object") == "chat.completion"
        else completion_chunks(response, include_usage)
    )
    return "".join(_event(c) for c in chunks) + _event("[DONE]")
