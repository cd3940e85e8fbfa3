"""Fakes for the stream relay's tests: OpenAI chat chunks, a recording Management API and the
requests table's status."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.stores.websocket import MAX_FRAME_BYTES, ConnectionGoneError, FrameTooLargeError


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
    """A fake Management API: records posts; a connection in ``gone`` raises as AWS does, and a
    frame over API Gateway's 128 KB is refused as AWS refuses it (as the adapter translates)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.gone: set[str] = set()

    def post(self, connection_id: str, text: str) -> None:
        if connection_id in self.gone:
            raise ConnectionGoneError(connection_id)
        if len(text.encode()) > MAX_FRAME_BYTES:
            raise FrameTooLargeError(connection_id)
        self.posts.append((connection_id, json.loads(text)))


class Statuses:
    """The requests table's ``status`` for the relay: request id → status; counts its reads."""

    def __init__(self, **statuses: str) -> None:
        self.statuses = dict(statuses)
        self.reads = 0

    def status(self, request_id: str) -> str | None:
        self.reads += 1
        return self.statuses.get(request_id)
