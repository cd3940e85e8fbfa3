"""Streaming on the HPC node: the engine's chunks, coalesced, pushed to the gateway's relay.

A streaming task carries ``"stream": {"relay_url", "token", "flush_ms", "flush_tokens"}`` (the
poller mints the capability token). The engine's chunks are read in this thread and handed to a
background sender, so generation never waits on the network; the sender pushes what has gathered
as soon as a token is there and the last push is more than ``flush_ms`` old, or ``flush_tokens``
tokens have gathered, one push at a time, numbered from 1, each retried with the same number
(the relay and the clients drop what they already have). A chunk too large for one WebSocket
frame (128 KB) is cut into several, and a large batch into several pushes (``plan_pushes``). A 410 from the relay means the client
is gone: generation is cancelled and the function returns what ran, ``stream_stats.cancelled``
true (the gateway stores the request ``cancelled``). The function's result is the plain one (the
whole response, assembled from the chunks) plus ``stream_stats``, so the gateway stores it
exactly as a non-streamed result.

Self-contained like every HPC function: no chalicelib, no boto3; ``requests`` only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# API Gateway delivers a WebSocket frame of at most 128 KB; the relay wraps each chunk in a frame
# (type, ids, seq, part: well under 4 KB with the longest client id) and refuses a push holding
# one over the limit (413). A chunk is split to fit, and a push carries at most this much (the
# relay's body limit is 6 MB) and the relay's 1,024 chunks.
MAX_CHUNK_BYTES = 124 * 1024
MAX_PUSH_BYTES = 1024 * 1024
MAX_CHUNKS_PER_PUSH = 1024
PUSH_RETRIES = 3
PUSH_BACKOFF_S = (0.05, 0.2, 0.5)
PUSH_TIMEOUT_S = (5.0, 15.0)
# How long the end of a stream may wait for its last pushes.
CLOSE_TIMEOUT_S = 30.0


# -- coalescing (pure) ----------------------------------------------------------------------


def _choice_tokens(choice: dict[str, Any]) -> int:
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return 1 if choice.get("text") else 0
    # vLLM's reasoning parsers stream the thinking as delta.reasoning_content: tokens too.
    return 1 if any(delta.get(k) for k in ("content", "reasoning_content", "tool_calls")) else 0


# The delta fields whose pieces join into one text.
_TEXT_FIELDS = ("content", "reasoning_content")


def merge_tool_calls(calls: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Adds streamed ``delta.tool_calls`` entries to ``calls`` (copies, merged by ``index``):
    the first entry of a call gives its id, type and name, later ones add to its arguments."""
    for entry in entries:
        call = next((c for c in calls if c.get("index") == entry.get("index")), None)
        if call is None:
            calls.append({**entry, "function": dict(entry.get("function") or {})})
            continue
        function = call.setdefault("function", {})
        for key, value in (entry.get("function") or {}).items():
            if key == "arguments":
                function["arguments"] = (function.get("arguments") or "") + (value or "")
            elif function.get(key) is None:
                function[key] = value
        for key, value in entry.items():
            if key != "function" and call.get(key) is None:
                call[key] = value


class Coalescer:
    """Merges consecutive chunks per choice into one chunk per choice; says when to flush.

    ``due`` is true once at least one token is pending and either ``flush_tokens`` are pending
    or the last flush is ``flush_s`` old (the first token flushes at once). A chunk with a
    finish reason is due at once: the client learns the end without waiting.
    """

    def __init__(self, flush_tokens: int, flush_s: float) -> None:
        self.flush_tokens = max(1, flush_tokens)
        self.flush_s = max(0.0, flush_s)
        self._template: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}
        self.tokens = 0
        self._finished = False
        self.last_flush = float("-inf")

    @property
    def pending(self) -> bool:
        return bool(self._choices)

    def add(self, chunk: dict[str, Any]) -> None:
        """Take one engine chunk (usage-only chunks carry no choices and are ignored)."""
        choices = chunk.get("choices") or []
        if not choices:
            return
        if self._template is None:
            self._template = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        for choice in choices:
            self.tokens += _choice_tokens(choice)
            self._merge(choice)

    def _merge(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index") or 0)
        current = self._choices.get(index)
        if current is None:
            merged = {k: v for k, v in choice.items()}
            if isinstance(choice.get("delta"), dict):
                merged["delta"] = dict(choice["delta"])
                if choice["delta"].get("tool_calls"):  # merged into later: a copy of its own
                    merged["delta"]["tool_calls"] = []
                    merge_tool_calls(merged["delta"]["tool_calls"], choice["delta"]["tool_calls"])
            self._choices[index] = merged
        elif isinstance(choice.get("delta"), dict):
            delta = current["delta"]
            for key, value in choice["delta"].items():
                if key in _TEXT_FIELDS and value is not None:
                    delta[key] = (delta.get(key) or "") + value
                elif key == "tool_calls" and value:
                    calls = delta.get("tool_calls") or []
                    merge_tool_calls(calls, value)
                    delta["tool_calls"] = calls
                elif key not in delta or delta[key] is None:
                    delta[key] = value
        else:
            current["text"] = (current.get("text") or "") + (choice.get("text") or "")
        if choice.get("finish_reason") is not None:
            self._choices[index]["finish_reason"] = choice["finish_reason"]
            self._finished = True

    def due(self, now: float) -> bool:
        if self._finished and self._choices:
            return True
        if self.tokens == 0:
            return False
        return self.tokens >= self.flush_tokens or now - self.last_flush >= self.flush_s

    def wait_s(self, now: float) -> float | None:
        """How long until ``due`` turns true by time alone (None: only a new token can)."""
        if self.tokens == 0:
            return None
        return max(0.0, self.last_flush + self.flush_s - now)

    def take(self, now: float) -> list[dict[str, Any]]:
        """The pending chunks, merged (one per choice, by index); resets the batch."""
        template = self._template or {}
        out = [{**template, "choices": [self._choices[i]]} for i in sorted(self._choices)]
        self._choices = {}
        self.tokens = 0
        self._finished = False
        self.last_flush = now
        return out


# -- splitting under the frame limit (pure) ------------------------------------------------


def _size(obj: Any) -> int:
    """Bytes of ``obj`` as the relay renders it in a frame (compact, ASCII-escaped JSON)."""
    return len(json.dumps(obj, separators=(",", ":")))


def _cut(text: str, room: int) -> list[str]:
    """``text`` in consecutive pieces, each at most ``room`` bytes once JSON-escaped (a
    character takes 1 to 12 bytes: ``\\ud83d\\ude00``)."""
    pieces: list[str] = []
    i = 0
    while i < len(text):
        n = min(len(text) - i, room)
        while (size := _size(text[i : i + n]) - 2) > room:
            n = min(n - 1, max(1, n * room // size))
        pieces.append(text[i : i + n])
        i += n
    return pieces


def split_chunk(chunk: dict[str, Any], limit: int = MAX_CHUNK_BYTES) -> list[dict[str, Any]]:
    """``chunk`` as chunks of at most ``limit`` bytes each, by cutting its one choice's text
    (``delta.content`` or ``text``): the first piece keeps the choice's other fields (role,
    logprobs), the last its finish reason. A chunk that is small enough, or whose size is not in
    its text, is returned as it is (the relay refuses it; the sender counts it and goes on)."""
    if _size(chunk) <= limit or len(chunk.get("choices") or []) != 1:
        return [chunk]
    choice = chunk["choices"][0]
    chat = isinstance(choice.get("delta"), dict)
    if chat and choice["delta"].get("tool_calls"):
        return _split_tool_calls(chunk, limit)
    text = choice["delta"].get("content") if chat else choice.get("text")
    if not isinstance(text, str) or not text:
        return [chunk]

    def with_text(base: dict[str, Any], piece: str, finish: Any) -> dict[str, Any]:
        out = {**base, "finish_reason": finish}
        if chat:
            out["delta"] = {**base["delta"], "content": piece}
        else:
            out["text"] = piece
        return {**chunk, "choices": [out]}

    room = limit - _size(with_text(choice, "", None))
    if room < 1024:
        return [chunk]
    rest: dict[str, Any] = {"index": choice.get("index", 0), "logprobs": None}
    if chat:
        rest["delta"] = {}
    pieces = _cut(text, room)
    last = len(pieces) - 1
    return [
        with_text(
            choice if i == 0 else rest, piece, choice.get("finish_reason") if i == last else None
        )
        for i, piece in enumerate(pieces)
    ]


def _split_tool_calls(chunk: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """A chat chunk carrying ``delta.tool_calls`` as chunks of one call entry each, a long
    ``arguments`` cut in pieces: the first piece keeps the entry's id, type and name and the
    delta's other fields, the last chunk the finish reason."""
    choice = chunk["choices"][0]
    head = {k: v for k, v in choice["delta"].items() if k != "tool_calls"}
    finish = choice.get("finish_reason")

    def with_entry(delta: dict[str, Any], entry: dict[str, Any], last: bool) -> dict[str, Any]:
        part = {**choice, "delta": {**delta, "tool_calls": [entry]}, "finish_reason": None}
        if last:
            part["finish_reason"] = finish
        return {**chunk, "choices": [part]}

    entries: list[dict[str, Any]] = []
    for entry in choice["delta"]["tool_calls"]:
        function = entry.get("function") or {}
        first = {**entry, "function": {**function, "arguments": ""}}
        room = limit - _size(with_entry(head, first, True))
        if room < 1024:
            return [chunk]
        pieces = _cut(str(function.get("arguments") or ""), room) or [""]
        entries.append({**first, "function": {**function, "arguments": pieces[0]}})
        entries.extend(
            {"index": entry.get("index"), "function": {"arguments": p}} for p in pieces[1:]
        )
    last = len(entries) - 1
    return [with_entry(head if i == 0 else {}, entry, i == last) for i, entry in enumerate(entries)]


def plan_pushes(batch: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The coalesced ``batch`` as pushes, in order: every chunk split under the frame limit,
    each push at most ``MAX_PUSH_BYTES`` and ``MAX_CHUNKS_PER_PUSH`` chunks."""
    pushes: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for chunk in batch:
        for piece in split_chunk(chunk):
            n = _size(piece)
            if current and (size + n > MAX_PUSH_BYTES or len(current) >= MAX_CHUNKS_PER_PUSH):
                pushes.append(current)
                current, size = [], 0
            current.append(piece)
            size += n
    if current:
        pushes.append(current)
    return pushes


# -- the sender ------------------------------------------------------------------------------


class RelayGoneError(Exception):
    """The relay refused the stream for good (410 gone, or the token refused)."""


class RelaySender:
    """A background thread that pushes coalesced chunks to the relay, in order."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        flush_ms: float = 50.0,
        flush_tokens: int = 16,
        on_gone: Any = None,
        session: Any = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        import requests

        self.url = url
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._coalescer = Coalescer(flush_tokens, flush_ms / 1000.0)
        self._cond = threading.Condition()
        self._closing = False
        self._on_gone = on_gone
        self.gone = False
        self.seq = 0
        self.stats: dict[str, Any] = {"pushes": 0, "push_retries": 0, "push_failures": 0}
        self.first_push_at: float | None = None
        # The stream dialect's state (opaque here): sent with each push, replaced by the one
        # the relay answers with, handed back with the result for the closing events.
        self.state = state
        self._thread = threading.Thread(target=self._run, name="relay-sender", daemon=True)
        self._thread.start()

    def add(self, chunk: dict[str, Any]) -> None:
        with self._cond:
            if self.gone:
                return
            self._coalescer.add(chunk)
            self._cond.notify()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Push what is left, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.stats["push_failures"] += 1
            log.warning("relay sender still busy after %.0f s; leaving it", timeout_s)

    def _next_batch(self) -> list[dict[str, Any]] | None:
        with self._cond:
            while True:
                now = time.monotonic()
                c = self._coalescer
                if self.gone:
                    return None
                if c.pending and (self._closing or c.due(now)):
                    return c.take(now)
                if self._closing:
                    return None
                self._cond.wait(c.wait_s(now))

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            for chunks in plan_pushes(batch):
                self.seq += 1
                try:
                    body: dict[str, Any] = {"seq": self.seq, "chunks": chunks}
                    if self.state is not None:
                        body["state"] = self.state
                    self._push(body)
                except RelayGoneError as exc:
                    log.info("stream stopped by the relay: %s", exc)
                    with self._cond:
                        self.gone = True
                    if self._on_gone is not None:
                        self._on_gone()
                    return
                except Exception as exc:  # noqa: BLE001 - counted; the result is stored anyway
                    self.stats["push_failures"] += 1
                    log.warning("push %d lost after retries: %s", self.seq, type(exc).__name__)

    def _push(self, body: dict[str, Any]) -> None:
        import requests

        for attempt in range(PUSH_RETRIES + 1):
            try:
                resp = self._session.post(self.url, json=body, timeout=PUSH_TIMEOUT_S)
            except requests.RequestException:
                if attempt == PUSH_RETRIES:
                    raise
            else:
                with resp:
                    status = resp.status_code
                    answer = _json_object(resp) if status < 300 and self.state is not None else {}
                if status < 300:
                    if isinstance(answer.get("state"), dict):
                        self.state = answer["state"]
                    self.stats["pushes"] += 1
                    if self.first_push_at is None:
                        self.first_push_at = time.time()
                    return
                if status in (401, 403, 410):
                    raise RelayGoneError(f"HTTP {status}")
                if status < 500 and status != 429 or attempt == PUSH_RETRIES:
                    raise RuntimeError(f"relay answered HTTP {status}")
            self.stats["push_retries"] += 1
            time.sleep(PUSH_BACKOFF_S[min(attempt, len(PUSH_BACKOFF_S) - 1)])


def _json_object(resp: Any) -> dict[str, Any]:
    try:
        value = resp.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- assembling the plain response ---------------------------------------------------------


class Assembler:
    """Builds the non-streamed response from the chunks (what the gateway stores)."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.texts: dict[int, str] = {}
        self.tool_calls: dict[int, list[dict[str, Any]]] = {}
        self.reasoning: dict[int, str] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: dict[str, Any] | None = None
        self.token_chunks = 0

    def add(self, chunk: dict[str, Any]) -> bool:
        """Take a chunk; True when it carried a token."""
        if self.first is None:
            self.first = chunk
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        tokens = 0
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index") or 0)
            delta = choice.get("delta")
            piece = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
            self.texts[index] = self.texts.get(index, "") + piece
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if calls:
                merge_tool_calls(self.tool_calls.setdefault(index, []), calls)
            thought = (delta.get("reasoning_content") if isinstance(delta, dict) else None) or ""
            if thought:
                self.reasoning[index] = self.reasoning.get(index, "") + thought
            tokens += 1 if piece or calls or thought else 0
            if choice.get("finish_reason") is not None or index not in self.finish:
                self.finish[index] = choice.get("finish_reason")
        self.token_chunks += tokens
        return tokens > 0

    def response(self, kind: str, cancelled: bool = False) -> dict[str, Any]:
        """The plain response. A cancelled stream's choices have no finish reason (null): the
        engine may still name one (the transformers engine ends its stream with "stop" or
        "length" when its generation is stopped), but the end was the client's."""
        first = self.first or {}
        chat = kind == "chat_completions"
        choices: list[dict[str, Any]] = []
        for index in sorted(self.texts) or [0]:
            text = self.texts.get(index, "")
            finish = None if cancelled else self.finish.get(index) or "stop"
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if self.reasoning.get(index):  # as vLLM answers it unstreamed
                    message["reasoning_content"] = self.reasoning[index]
                calls = self.tool_calls.get(index)
                if calls:  # as OpenAI answers a call: null content, the calls without index
                    message["content"] = None
                    message["tool_calls"] = [
                        {k: v for k, v in c.items() if k != "index"} for c in calls
                    ]
                choices.append(
                    {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
                )
            else:
                choices.append(
                    {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                )
        usage = self.usage or {"prompt_tokens": 0, "completion_tokens": self.token_chunks}
        usage = {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        details = (self.usage or {}).get("prompt_tokens_details")
        if isinstance(details, dict):  # cached_tokens, as the engine counted them
            usage["prompt_tokens_details"] = details
        response: dict[str, Any] = {
            "id": first.get("id"),
            "object": "chat.completion" if chat else "text_completion",
            "created": first.get("created") or int(time.time()),
            "model": first.get("model"),
            "choices": choices,
            "usage": usage,
        }
        if first.get("system_fingerprint"):
            response["system_fingerprint"] = first["system_fingerprint"]
        return response


# -- the task ---------------------------------------------------------------------------------


def run_stream_task(kind: str, task: dict[str, Any]) -> dict[str, Any]:
    """Run one streaming task; the plain result plus ``stream_stats``."""
    from hpc_functions.engines.base import EngineError
    from hpc_functions.engines.warm import get_engine

    stream = task["stream"]
    started_at = time.time()
    started = time.perf_counter()
    cancel = threading.Event()
    sender: RelaySender | None = None
    assembler = Assembler()
    first_token_at: float | None = None
    body = dict(task["body"])
    # vLLM then reports usage on every chunk: exact counts even for a stream cut short.
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    try:
        engine = get_engine(task["engine"])
        method = getattr(engine, f"stream_{kind}", None)
        if method is None:
            raise EngineError(f"this engine cannot stream {kind}", param="stream")
        chunks: Iterator[dict[str, Any]] = method(body, cancel=cancel)
        sender = RelaySender(
            str(stream["relay_url"]),
            str(stream["token"]),
            flush_ms=float(stream.get("flush_ms") or 50.0),
            flush_tokens=int(stream.get("flush_tokens") or 16),
            on_gone=cancel.set,
            state=stream.get("state") if isinstance(stream.get("state"), dict) else None,
        )
        try:
            for chunk in chunks:
                if assembler.add(chunk) and first_token_at is None:
                    first_token_at = time.time()
                sender.add(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except EngineError as exc:
        if sender is not None:
            sender.close()
        return exc.to_result()
    finished_at = time.time()
    engine_time_ms = (time.perf_counter() - started) * 1000.0
    sender.close()
    response = assembler.response(kind, cancel.is_set())
    max_tokens = task["body"].get("max_completion_tokens") or task["body"].get("max_tokens")
    stats = {
        "started_at": round(started_at, 6),
        "first_token_at": None if first_token_at is None else round(first_token_at, 6),
        "first_push_at": None if sender.first_push_at is None else round(sender.first_push_at, 6),
        "finished_at": round(finished_at, 6),
        "completion_tokens": response["usage"]["completion_tokens"],
        "max_tokens": max_tokens,
        "cancelled": cancel.is_set(),
        **sender.stats,
    }
    if sender.state is not None:
        stats["dialect_state"] = sender.state
    return {"response": response, "engine_time_ms": engine_time_ms, "stream_stats": stats}
