"""The Messages API's stream dialect (``chalicelib.protocol.dialects``): chat chunks as Anthropic's
events, on every transport (REST buffered, the WebSocket API, ``first proxy``).

The first chunk opens the message (``message_start``, then a ``ping``); each delta goes into the
content block of its kind (``thinking_delta``, ``text_delta``, and per tool call a ``tool_use``
block fed ``input_json_delta`` pieces), a block of another kind closing the one before
(``content_block_stop``). The closing events, from the finished chat result, close the last
block and send ``message_delta`` (``stop_reason``, ``stop_sequence``, the usage: input tokens
too, since they are known only at the end of a live stream) and ``message_stop``. Anthropic's
stream has no ``[DONE]``; an error is an ``error`` event in its shape.

State (JSON, the dialect's own): ``id``/``model``/``stop_sequences`` given by the API, then
``started``, ``block`` (the open block's kind, or none), ``tool`` (its tool call's index) and
``next`` (the next block's index).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import Field, model_validator

from chalicelib.errors import error_from_body
from chalicelib.protocol import dialects
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import validate
from chalicelib.protocol.dialects import State
from chalicelib.protocol.messages import MessagesRequest, stop_of

NAME = "messages"


def stream_state(message_id: str, model: str, stop_sequences: list[str] | None) -> State:
    """The first state of a stream answering a Messages body (made by the API)."""
    return {"id": message_id, "model": model, "stop_sequences": list(stop_sequences or [])}


class MessagesDialect(dialects.Dialect):
    name = NAME

    def chunk_events(self, state: State, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events = _start(state)
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Messages has one answer (n is not a Messages field)
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events += _open(state, "thinking")
                events.append(_delta(state, "thinking_delta", thinking=delta["reasoning_content"]))
            if delta.get("content"):
                events += _open(state, "text")
                events.append(_delta(state, "text_delta", text=delta["content"]))
            for call in delta.get("tool_calls") or []:
                events += _tool(state, call)
        return events

    def closing_events(
        self,
        state: State,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        if status == "failed":
            return []  # the error frame ends the stream (``sse_error``)
        events = _start(state) + _close(state)
        choice = ((result or {}).get("choices") or [{}])[0]
        called = bool((choice.get("message") or {}).get("tool_calls"))
        stop_reason, stop_sequence = stop_of(choice, state.get("stop_sequences") or [], called)
        usage = (result or {}).get("usage") or {}
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {
                    "input_tokens": int(usage.get("prompt_tokens") or 0),
                    "output_tokens": int(usage.get("completion_tokens") or 0),
                },
            }
        )
        events.append({"type": "message_stop"})
        return events

    def sse(self, event: dict[str, Any]) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"

    def sse_error(self, error: dict[str, Any], last_event: dict[str, Any] | None) -> str:
        return self.sse(error_from_body(error).to_anthropic_body())

    def sse_end(self) -> str:
        return ""


def _start(state: State) -> list[dict[str, Any]]:
    if state.get("started"):
        return []
    state.update(started=True, block=None, tool=None, next=0)
    message: dict[str, Any] = {
        "id": state.get("id") or "msg_stream",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": state.get("model") or "",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": int(state.get("input_tokens") or 0), "output_tokens": 0},
    }
    return [{"type": "message_start", "message": message}, {"type": "ping"}]


def _close(state: State) -> list[dict[str, Any]]:
    if state.get("block") is None:
        return []
    state.update(block=None, tool=None)
    return [{"type": "content_block_stop", "index": state["next"] - 1}]


def _begin(state: State, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
    events = _close(state)
    index = state["next"]
    state.update(block=kind, next=index + 1)
    events.append({"type": "content_block_start", "index": index, "content_block": block})
    return events


def _open(state: State, kind: str) -> list[dict[str, Any]]:
    if state.get("block") == kind:
        return []
    block = {"type": "text", "text": ""}
    if kind == "thinking":
        block = {"type": "thinking", "thinking": "", "signature": ""}
    return _begin(state, kind, block)


def _delta(state: State, kind: str, **fields: Any) -> dict[str, Any]:
    index = state["next"] - 1
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def _tool(state: State, call: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool call's delta: its head (id, name) opens a ``tool_use`` block, its arguments feed
    the block of the call with the same ``index``."""
    index = call.get("index", 0)
    function = call.get("function") or {}
    events: list[dict[str, Any]] = []
    if call.get("id") or state.get("block") != "tool_use" or state.get("tool") != index:
        head = {"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or ""}
        events += _begin(state, "tool_use", {**head, "input": {}})
        state["tool"] = index
    if function.get("arguments"):
        events.append(_delta(state, "input_json_delta", partial_json=function["arguments"]))
    return events


MESSAGES = dialects.register(MessagesDialect())


class MessagesAsChat(ChatCompletionRequest):
    """A Messages body as the chat request that answers it: the WebSocket API's ``messages``
    action, which streams in this dialect (``first proxy`` serves it as Anthropic's SSE)."""

    # The stream's first state (message id, model, stop sequences); never sent to the engine.
    messages_state: dict[str, Any] | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _from_messages(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "messages_state" in data:
            return data
        req = validate(data, MessagesRequest)
        chat = req.to_chat().model_dump(exclude_none=True)
        state = stream_state(f"msg_{uuid.uuid4().hex}", req.model, req.stop_sequences)
        return {**chat, "messages_state": state}

    def stream_dialect(self) -> dict[str, Any]:
        return {"dialect": MESSAGES.name, "state": self.messages_state or {}}
