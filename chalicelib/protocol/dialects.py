"""Stream dialects: how a wire protocol streams what every engine produces (chat chunks).

Engines speak one language, OpenAI chat completions (``chat.completion.chunk`` while streaming,
one ``chat.completion`` at the end). A dialect turns that into its own events, in one pure place
used by every transport:

- REST (``stream: true`` over plain HTTP, buffered): the finished result is cut into the chunks
  an engine would have streamed (``sse.chunks``), each chunk becomes the dialect's events, the
  closing events follow, then the dialect's end of stream (``render_buffered``).
- WebSocket: the relay turns each pushed chunk into events (one ``chunk`` frame each); the poller,
  once the result is stored, posts the closing events (from the full result) before ``done``.
- ``first proxy``: serves the WebSocket's events as SSE framed by the dialect (``sse``,
  ``sse_error``, ``sse_end``).

Per-stream state (event numbering, which output items are open) is a small JSON object, the
dialect's own. It never lives in a gateway process: the API makes the first one with the
request (``stream_state``), the HPC function sends the latest with each push and keeps the one
the relay answers with (a retried push carries the same state, so it renders the same events), and
hands the last one back with its result for the closing events. So pushes of one stream may land
on any relay process (Lambda container) and the numbering stays whole.

A dialect is registered by name in ``DIALECTS``; the name travels in the stream's record and its
capability token. ``chat`` is the identity: a chunk is its own event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from chalicelib import sse

State = dict[str, Any]


class Dialect:
    """The chat dialect (identity); other dialects override what differs."""

    name = "chat"

    def chunk_events(self, state: State, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one pushed chunk becomes; may update ``state``."""
        if state.get("include_usage") and "usage" not in chunk:
            return [{**chunk, "usage": None}]  # as OpenAI sends them before the usage chunk
        return [chunk]

    def closing_events(
        self,
        state: State,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The events that end a stream, from its outcome: ``status`` completed (``result`` the
        full chat result), cancelled (``result`` what ran), or failed (``error`` the OpenAI error
        object). Chat ends with the usage chunk when the client asked for it."""
        if status != "completed" or result is None or not state.get("include_usage"):
            return []
        return [sse.usage_chunk(result)]

    def sse(self, event: dict[str, Any]) -> str:
        return _data(event)

    def sse_error(self, error: dict[str, Any], last_event: dict[str, Any] | None) -> str:
        """An error that ends the stream (an OpenAI error object), after ``last_event``."""
        return _data({"error": error})

    def sse_end(self) -> str:
        return _data("[DONE]")


def _data(obj: dict[str, Any] | str) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {text}\n\n"


CHAT = Dialect()
DIALECTS: dict[str, Dialect] = {CHAT.name: CHAT}


def register(dialect: Dialect) -> Dialect:
    """Add a dialect (its module calls this on import); returns it."""
    DIALECTS[dialect.name] = dialect
    return dialect


def get(name: str | None) -> Dialect:
    """The dialect named (chat when none is); a name nobody registered is a wiring bug."""
    if not name:
        return CHAT
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"no stream dialect named {name!r}") from None


def push_events(
    dialect: Dialect, state: State | None, chunks: Iterable[dict[str, Any]]
) -> tuple[list[dict[str, Any]], State]:
    """One push's chunks as the dialect's events, and the state after them (``state`` itself is
    left as it was: a retried push renders the same events from the same state)."""
    after: State = json.loads(json.dumps(state or {}))
    events = [event for chunk in chunks for event in dialect.chunk_events(after, chunk)]
    return events, after


def closing_state(first: State | None, last: State | None) -> State:
    """The state closing events are made from: the stream's last, over its first (a dialect may
    drop from the pushes' state what only the first and the last need)."""
    return {**(first or {}), **(last or {})}


def render_buffered(dialect: Dialect, state: State | None, result: dict[str, Any]) -> str:
    """A finished result as the whole ``text/event-stream`` body a client would have streamed."""
    events, after = push_events(dialect, state, sse.chunks(result))
    events += dialect.closing_events(closing_state(state, after), "completed", result)
    return "".join(dialect.sse(e) for e in events) + dialect.sse_end()
