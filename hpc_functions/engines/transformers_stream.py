"""Token streaming for the transformers engine: ``generate`` in a thread, tokens as they come.

The engine prepares the request (its public preparation step) and :func:`stream` runs
``engine.generate`` in a thread of its own (holding the engine's lock, as a plain call does),
handing each new token to a streamer of ours; the caller's thread decodes them and yields OpenAI
chunks. A ``cancel`` event stops generation at the next token (the client went away), and the
stream still ends with its finish and usage chunks, counting only the tokens that ran.

What streams is exactly what the plain call returns: the text is re-read from all tokens so far
(``engine.output_text``), a tail that could be the start of a stop string (or half a UTF-8
character) is held back, and the last chunk carries whatever the plain call's own finishing
(``engine.finish``) adds. A row that calls tools streams as OpenAI streams tool calls
(``delta.tool_calls``: index, id, type and name first, then the arguments in pieces, read by
``output_format.ToolCallStream``), and ends with the plain call's finish reason. Several choices
(``n`` > 1) or prompts are generated as one batch, which ``generate`` cannot stream: those run
whole and are then sent as chunks.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from transformers.generation.streamers import BaseStreamer

from hpc_functions.engines.output_format import ToolCallStream

if TYPE_CHECKING:
    from hpc_functions.engines.transformers_engine import Prepared, TransformersEngine

_END = object()


class _TokenQueue(BaseStreamer):
    """Receives ``generate``'s tokens (batch of one); the first ``put`` is the prompt."""

    def __init__(self) -> None:
        self.tokens: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(_END)


def stream(
    engine: TransformersEngine, prepared: Prepared, cancel: threading.Event | None
) -> Iterator[dict[str, Any]]:
    """The chunks of a prepared chat or completions request."""
    if prepared.sampling.n != 1 or len(prepared.prompts) != 1:
        return whole_as_chunks(engine.response(prepared, engine.run(prepared)))
    cancel = cancel or threading.Event()
    if prepared.kind == "chat_completions":
        return _chat_chunks(engine, prepared, cancel)
    return _completion_chunks(engine, prepared, cancel)


def _chat_chunks(
    engine: TransformersEngine, prepared: Prepared, cancel: threading.Event
) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": engine.served_name,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""}, None)
    finish, tokens = "stop", 0
    cached: list[int] = []
    for kind, value in _events(engine, prepared, cancel, cached):
        if kind == "content" and value:
            yield chunk({"content": value}, None)
        elif kind == "tool_call":
            yield chunk({"tool_calls": [value]}, None)
        elif kind == "finish":
            finish, tokens = value
    yield chunk({}, finish)
    yield {**base, "choices": [], "usage": usage_of(prepared, tokens, sum(cached))}


def _completion_chunks(
    engine: TransformersEngine, prepared: Prepared, cancel: threading.Event
) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": engine.served_name,
    }

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    finish, tokens = "stop", 0
    cached: list[int] = []
    for kind, value in _events(engine, prepared, cancel, cached):
        if kind == "content" and value:
            yield chunk(value, None)
        elif kind == "finish":
            finish, tokens = value
    yield chunk("", finish)
    yield {**base, "choices": [], "usage": usage_of(prepared, tokens, sum(cached))}


class _Router:
    """Sends new text as content, or, for a row that may call tools, through a tool-call reader
    until the row turns out to be text (``tool_choice: auto``) or a JSON answer."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self.reader = ToolCallStream() if mode not in (None, "json") else None

    def route(self, text: str) -> Iterator[tuple[str, Any]]:
        reader = self.reader
        if reader is None:
            yield "content", text
            return
        if self.mode == "tools_or_text" and not reader.text and not text.startswith("{"):
            self.reader = None  # free text: the grammar has let the row go
            yield "content", text
            return
        for entry in reader.feed(text):
            yield "tool_call", entry
        if reader.kind == "content":  # a JSON answer, not a call: all of it is content
            self.reader = None
            yield "content", reader.text

    def close(self) -> Iterator[tuple[str, Any]]:
        """Text a reader still holds undecided (a row cut short) goes out as content."""
        if self.reader is not None and self.reader.kind is None and self.reader.text:
            yield "content", self.reader.text
        self.reader = None


def _events(
    engine: TransformersEngine,
    prepared: Prepared,
    cancel: threading.Event,
    cached: list[int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """("content", text) and ("tool_call", delta entry) as tokens arrive; the last event is
    ("finish", (finish_reason, completion tokens))."""
    params, constraint = prepared.sampling, prepared.constraint
    streamer = _TokenQueue()
    failure: list[BaseException] = []
    # Set when the consumer stops reading (the generator is closed): generation stops too.
    abandoned = threading.Event()

    def generate() -> None:
        try:
            engine.generate(
                prepared.prompts,
                params,
                [constraint] if constraint is not None else None,
                streamer=streamer,
                stop_events=(cancel, abandoned),
                model_inputs=prepared.model_inputs,
                salt=prepared.cache_salt,
                cached=cached,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            streamer.end()

    thread = threading.Thread(target=generate, name="generate-stream", daemon=True)
    thread.start()
    hold = max((len(s) for s in params.stop), default=1) - 1
    ends = set(engine.eos_ids) | {engine.pad_id}
    router = _Router(constraint.mode if constraint is not None else None)
    row: list[int] = []
    sent = ""
    try:
        while (token := streamer.tokens.get()) is not _END:
            row.append(token)
            if token in ends:
                continue
            text = engine.output_text(row, constraint)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                # The stop string is complete: nothing from it on is ever sent.
                text, hold = text[:cut], 0
            safe = text[: len(text) - hold] if hold else text
            safe = safe.rstrip("\ufffd")  # half a character: wait for the rest of it
            if len(safe) > len(sent) and safe.startswith(sent):
                piece, sent = safe[len(sent) :], safe
                yield from router.route(piece)
    finally:
        abandoned.set()
        thread.join()
    if failure:
        raise failure[0]
    final = engine.finish(row, params, constraint, named_tool=prepared.named_tool)
    rest = final.text[len(sent) :] if final.text.startswith(sent) else ""
    if rest:
        yield from router.route(rest)
    yield from router.close()
    yield "finish", (final.finish_reason, final.completion_tokens)


def whole_as_chunks(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A finished response as the chunk sequence a stream of it would have been."""
    chat = response.get("object") == "chat.completion"
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response["created"],
        "model": response["model"],
    }
    for choice in response["choices"]:
        index = choice["index"]
        if chat:
            message = choice["message"]
            first: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
            if message.get("tool_calls"):
                first["tool_calls"] = [
                    {"index": i, **call} for i, call in enumerate(message["tool_calls"])
                ]
            for delta, finish in ((first, None), ({}, choice["finish_reason"])):
                yield {
                    **base,
                    "choices": [
                        {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
        else:
            for text, finish in ((choice.get("text") or "", None), ("", choice["finish_reason"])):
                yield {
                    **base,
                    "choices": [
                        {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                    ],
                }
    yield {**base, "choices": [], "usage": response.get("usage")}


def usage_of(prepared: Prepared, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's usage; a salted request (one that may use the prefix cache) also says how many
    prompt tokens came from it (the plain answer's too: ``TransformersEngine.response``)."""
    prompt_tokens = prepared.prompt_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if prepared.cache_salt is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage
