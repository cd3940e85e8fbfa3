"""Render a finished Anthropic ``message`` as the Messages API's ``text/event-stream`` body.

Over plain HTTP ``stream: true`` is buffered (as ``chalicelib/sse.py`` does for chat): the whole
message is computed, then sent as the events the anthropic SDK parses: ``message_start`` (the
message with empty content, no stop reason yet), a ``ping``, per content block
``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``,
``thinking_delta``) / ``content_block_stop``, then ``message_delta`` (``stop_reason``,
``stop_sequence``, the output tokens) and ``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from chalicelib.sse import ARGUMENT_PIECE_CHARS, _pieces


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _block_events(index: int, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"]) if p]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"]) if p
        ]
    else:  # tool_use: the input object in pieces of its JSON
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        text = json.dumps(block["input"], separators=(",", ":"))
        deltas = [
            {"type": "input_json_delta", "partial_json": text[i : i + ARGUMENT_PIECE_CHARS]}
            for i in range(0, len(text), ARGUMENT_PIECE_CHARS)
        ]
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": start},
    )
    for delta in deltas:
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event name, data) pairs that stream ``message``."""
    usage = message["usage"]
    head = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    yield "message_start", {"type": "message_start", "message": head}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        yield from _block_events(index, block)
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def render(message: dict[str, Any]) -> str:
    return "".join(_event(name, data) for name, data in events(message))
