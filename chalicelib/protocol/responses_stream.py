"""The Responses stream dialect: chat chunks as OpenAI's Responses events.

``response.created`` and ``response.in_progress`` open the stream; each output item is opened
(``response.output_item.added``, and for a message ``response.content_part.added``) when its
first delta comes, in the order they come (``output_index``); deltas are
``response.output_text.delta``, ``response.reasoning_text.delta`` and
``response.function_call_arguments.delta``. The closing events come from the full result:
each item's ``…done`` events (opening first an item no delta opened), then
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it) with the
whole ``response`` object. Every event has its ``sequence_number``, from the stream's state.

State (``chalicelib.protocol.dialects``): ``response`` (the skeleton: sent once with
``response.created``, then dropped from the pushes' state: the closing events take it from the
stream's first state), ``n`` (the next sequence number), ``opened`` (item keys in output order:
``reasoning``, ``message``, ``call:<index>``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, model_validator

from chalicelib.errors import BadRequestError
from chalicelib.protocol import dialects
from chalicelib.protocol import responses as rp
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import validate

State = dict[str, Any]


class ResponsesDialect(dialects.Dialect):
    name = "responses"

    def chunk_events(self, state: State, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if "response" in state:
            base = state.pop("response")
            state["id"] = base["id"]
            self._add(state, events, "response.created", response=base)
            self._add(state, events, "response.in_progress", response=base)
        rid = str(state.get("id") or "")
        for choice in chunk.get("choices") or []:
            if int(choice.get("index") or 0) != 0:
                continue  # a response has one choice
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                opening = {**rp.reasoning_item(rid, ""), "content": []}
                index = self._open(state, events, "reasoning", opening)
                self._add(
                    state,
                    events,
                    "response.reasoning_text.delta",
                    item_id=rp.reasoning_item_id(rid),
                    output_index=index,
                    content_index=0,
                    delta=delta["reasoning_content"],
                )
            if delta.get("content"):
                index = self._open_message(state, events, rid)
                self._add(
                    state,
                    events,
                    "response.output_text.delta",
                    item_id=rp.message_item_id(rid),
                    output_index=index,
                    content_index=0,
                    delta=delta["content"],
                    logprobs=[],
                )
            for entry in delta.get("tool_calls") or []:
                at = int(entry.get("index") or 0)
                call = {"id": entry.get("id"), "function": {**(entry.get("function") or {})}}
                call["function"]["arguments"] = ""
                item = rp.call_item(rid, at, call, status="in_progress")
                index = self._open(state, events, f"call:{at}", item)
                piece = (entry.get("function") or {}).get("arguments")
                if piece:
                    self._add(
                        state,
                        events,
                        "response.function_call_arguments.delta",
                        item_id=rp.call_item_id(rid, at),
                        output_index=index,
                        delta=piece,
                    )
        return events

    def closing_events(
        self,
        state: State,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The items' done events and the final response; a failed or cancelled stream ends
        with the transport's error instead (``sse_error``)."""
        if status != "completed" or result is None:
            return []
        events: list[dict[str, Any]] = []
        base = state.get("response") or {}
        if not state.get("id"):  # no push was answered: the stream opens here
            self.chunk_events(state, {"choices": []})
        final = rp.response_from_chat(base, result)
        rid = final["id"]
        calls = 0
        for item in final["output"]:
            if item["type"] == "message":
                index = self._open_message(state, events, rid)
                text = item["content"][0]["text"]
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                self._add(
                    state, events, "response.output_text.done", **where, text=text, logprobs=[]
                )
                self._add(
                    state, events, "response.content_part.done", **where, part=item["content"][0]
                )
            elif item["type"] == "reasoning":
                opening = {**rp.reasoning_item(rid, ""), "content": []}
                index = self._open(state, events, "reasoning", opening)
                text = item["content"][0]["text"]
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                self._add(state, events, "response.reasoning_text.done", **where, text=text)
            else:
                opening = {**item, "arguments": "", "status": "in_progress"}
                index = self._open(state, events, f"call:{calls}", opening)
                calls += 1
                self._add(
                    state,
                    events,
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            self._add(state, events, "response.output_item.done", output_index=index, item=item)
        closing = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        self._add(state, events, closing, response=final)
        return events

    def sse(self, event: dict[str, Any]) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"

    def sse_error(self, error: dict[str, Any], last_event: dict[str, Any] | None) -> str:
        after = (last_event or {}).get("sequence_number")
        event = {
            "type": "error",
            "code": error.get("code"),
            "message": error.get("message") or "",
            "param": error.get("param"),
            "sequence_number": after + 1 if isinstance(after, int) else 0,
        }
        return self.sse(event)

    def sse_end(self) -> str:
        return ""  # the Responses stream has no [DONE]: response.completed ends it

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _add(state: State, events: list[dict[str, Any]], kind: str, **fields: Any) -> None:
        n = int(state.get("n") or 0)
        events.append({"type": kind, "sequence_number": n, **fields})
        state["n"] = n + 1

    def _open(
        self, state: State, events: list[dict[str, Any]], key: str, item: dict[str, Any]
    ) -> int:
        """The output index of item ``key``, opening it first (``output_item.added``)."""
        opened: list[str] = state.setdefault("opened", [])
        if key in opened:
            return opened.index(key)
        opened.append(key)
        index = len(opened) - 1
        self._add(state, events, "response.output_item.added", output_index=index, item=item)
        if key == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            self._add(
                state,
                events,
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        return index

    def _open_message(self, state: State, events: list[dict[str, Any]], rid: str) -> int:
        if "message" in state.get("opened", []):
            return int(state["opened"].index("message"))
        item = {**rp.message_item(rid, "", status="in_progress"), "content": []}
        index = self._open(state, events, "message", item)
        self._add(
            state,
            events,
            "response.content_part.added",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=rp.output_text_part(""),
        )
        return index


RESPONSES = dialects.register(ResponsesDialect())


def first_state(base: dict[str, Any]) -> State:
    """A stream's state before its first push: the response skeleton (``responses.skeleton``)."""
    return {"response": base, "n": 0, "opened": []}


class ResponsesAsChat(ChatCompletionRequest):
    """A Responses body as the chat request that answers it: the WebSocket API's ``responses``
    action, which streams in this dialect. The conversation a ``previous_response_id`` names is
    rebuilt by the REST route only (it reads the stored responses): not over the WebSocket yet."""

    # The response object before any output; never sent to the engine.
    responses_base: dict[str, Any] | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _from_responses(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "messages" in data:
            return data
        req = validate(data, rp.ResponsesRequest)
        if req.previous_response_id is not None:
            raise BadRequestError(
                "previous_response_id is not supported over the WebSocket API yet: send the "
                "conversation as input, or use POST /v1/responses.",
                param="previous_response_id",
            )
        chat = rp.to_chat(req).model_dump(exclude_none=True)
        return {**chat, "responses_base": rp.skeleton(req, rp.new_response_id())}

    def stream_dialect(self) -> dict[str, Any]:
        return {"dialect": RESPONSES.name, "state": first_state(self.responses_base or {})}
