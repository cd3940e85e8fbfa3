"""Render a finished OpenAI response as a ``text/event-stream`` body.

Over plain HTTP (a Lambda returns one body) ``stream=true`` is buffered: the whole completion is
computed, then sent as the chunk sequence the OpenAI SDK parses: a role chunk, content chunks,
a finish chunk per choice, the usage chunk when ``stream_options.include_usage``, ``[DONE]``.
Tool calls stream as OpenAI streams them: per call, one chunk with its ``index``, ``id``,
``type`` and name (``arguments: ""``), then the arguments in pieces under the same ``index``;
``reasoning_content`` (where an engine wrote some) comes before the content, in pieces too.
Live token streams go over the WebSocket API instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

# Split after whitespace so each chunk carries a word and its trailing space, as engines do.
_PIECES = re.compile(r"\S+\s*|\s+")
# A tool call's arguments (JSON, rarely any whitespace) go in pieces of a few tokens' worth.
ARGUMENT_PIECE_CHARS = 16


def _pieces(text: str) -> list[str]:
    return _PIECES.findall(text) or [""]


def _event(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def _base(response: dict[str, Any]) -> dict[str, Any]:
    """The fields every chunk of ``response`` repeats."""
    chat = response.get("object") == "chat.completion"
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response["created"],
        "model": response["model"],
    }
    if chat and response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    return base


def usage_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """The last chunk under ``stream_options.include_usage``: no choices, the usage."""
    return {**_base(response), "choices": [], "usage": response.get("usage")}


def chat_chunks(response: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = _base(response)
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    for choice in response["choices"]:
        idx = choice["index"]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        content = message.get("content")
        yield chunk(
            idx, {"role": "assistant", "content": None if calls and not content else ""}, None
        )
        for piece in _pieces(message.get("reasoning_content") or ""):
            if piece:
                yield chunk(idx, {"reasoning_content": piece}, None)
        for piece in _pieces(content or ""):
            if piece:
                yield chunk(idx, {"content": piece}, None)
        for delta in tool_call_deltas(calls):
            yield chunk(idx, delta, None)
        yield chunk(idx, {}, choice["finish_reason"])
    if include_usage:
        yield usage_chunk(response)


def tool_call_deltas(calls: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The deltas OpenAI streams a message's ``tool_calls`` in: the head, then the arguments."""
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        head = {
            "index": index,
            "id": call.get("id"),
            "type": call.get("type", "function"),
            "function": {"name": function.get("name"), "arguments": ""},
        }
        yield {"tool_calls": [head]}
        arguments = function.get("arguments") or ""
        for start in range(0, len(arguments), ARGUMENT_PIECE_CHARS):
            piece = arguments[start : start + ARGUMENT_PIECE_CHARS]
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def completion_chunks(response: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    base = _base(response)
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
        yield usage_chunk(response)


def chunks(response: dict[str, Any], include_usage: bool = False) -> Iterator[dict[str, Any]]:
    """The chunks an engine would have streamed ``response`` (chat or completions) in."""
    if response.get("object") == "chat.completion":
        return chat_chunks(response, include_usage)
    return completion_chunks(response, include_usage)


def render(response: dict[str, Any], include_usage: bool) -> str:
    return "".join(_event(c) for c in chunks(response, include_usage)) + _event("[DONE]")
