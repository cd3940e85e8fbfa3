"""Fakes for the stream relay's tests: OpenAI chat chunks and a recording Management API."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.stores.websocket import ConnectionGoneError


def chat_chunk(
    content: str | None = None, finish: str | None = None, **delta: Any
) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }


class RecordingPoster:
    """A fake Management API: records posts; a connection in ``gone`` raises as AWS does."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.gone: set[str] = set()

    def post(self, connection_id: str, text: str) -> None:
        if connection_id in self.gone:
            raise ConnectionGoneError(connection_id)
        self.posts.append((connection_id, json.loads(text)))
