"""The server frames of the WebSocket protocol (JSON text), built in one place.

Every frame carries the client's ``id`` (its reference for the request) and the gateway's
``request_id`` (null only for a request refused before it had one)::

    {"type": "chunk", "id", "request_id", "seq", "part",
     "data": <chat.completion.chunk | text_completion chunk>}
    {"type": "done",  "id", "request_id", "usage": {prompt_tokens, completion_tokens,
                     total_tokens[, prompt_tokens_details: {cached_tokens}]}, "timing": {...}}
    {"type": "error", "id", "request_id", "error": {OpenAI error object}, "status": int}

``seq`` numbers the HPC function's pushes (1, 2, …) and ``part`` the chunks of one push (0, 1,
…; one per choice): a client that sees a ``(seq, part)`` at or below the last it took for that
``id`` is looking at a retried push and drops it. A stream dialect's closing events (posted by
the poller once the result is stored, before ``done``) carry ``seq`` ``CLOSING_SEQ``, above every
push's, so they sort last and a resent ending is dropped the same way.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.errors import FirstError
from chalicelib.protocol.bounds import INT32_MAX

# Above the largest push ``seq`` the relay takes (``relay.MAX_SEQ``, int32).
CLOSING_SEQ = INT32_MAX + 1


def _text(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def chunk(
    client_ref: str | None, request_id: str, seq: int, part: int, data: dict[str, Any]
) -> str:
    return _text(
        {
            "type": "chunk",
            "id": client_ref,
            "request_id": request_id,
            "seq": seq,
            "part": part,
            "data": data,
        }
    )


def done(
    client_ref: str | None,
    request_id: str,
    usage: dict[str, Any],
    timing: dict[str, Any] | None = None,
) -> str:
    frame: dict[str, Any] = {
        "type": "done",
        "id": client_ref,
        "request_id": request_id,
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0),
        },
    }
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and "cached_tokens" in details:
        frame["usage"]["prompt_tokens_details"] = {
            "cached_tokens": int(details["cached_tokens"] or 0)
        }
    if timing:
        frame["timing"] = timing
    return _text(frame)


def error(client_ref: Any, request_id: str | None, exc: FirstError) -> str:
    body = exc.to_body()["error"]
    return _text(
        {
            "type": "error",
            "id": client_ref,
            "request_id": request_id if request_id is not None else exc.request_id,
            "error": body,
            "status": exc.STATUS_CODE,
        }
    )
