"""A small client of the gateway's WebSocket streaming API, yielding the OpenAI SDK's own types.

    from first_cli.client import stream_chat
    for chunk in stream_chat(model="first/tiny-chat", messages=[...], max_tokens=64):
        print(chunk.choices[0].delta.content or "", end="", flush=True)

``FIRST_WS_URL`` and ``OPENAI_API_KEY`` (or explicit ``ws_url=`` / ``api_key=``) say where and
who. ``StreamClient`` keeps one connection and multiplexes any number of requests over it (a
reader thread sorts frames by the client's ``id``); the module functions open one per call.
The protocol is in ``chalicelib/streaming/frames.py`` and the README.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import uuid
from collections.abc import Generator, Iterator
from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletionChunk
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from chalicelib.errors import FirstError, UpstreamUnavailableError, WaitTimeoutError

_CLOSED: dict[str, Any] = {"type": "closed"}


class StreamError(Exception):
    """The gateway refused or failed a request (an ``error`` frame, or a refused connect)."""

    def __init__(self, status: int, error: dict[str, Any], request_id: str | None = None) -> None:
        super().__init__(str(error.get("message") or f"HTTP {status}"))
        self.status = status
        self.error = error
        self.request_id = request_id

    @classmethod
    def of(cls, exc: FirstError, request_id: str | None = None) -> StreamError:
        """The client's own failure of a request, as one of the error tree's errors."""
        return cls(exc.STATUS_CODE, exc.to_body()["error"], request_id)


class StreamClient:
    def __init__(
        self,
        ws_url: str,
        api_key: str,
        *,
        open_timeout_s: float = 10.0,
        idle_timeout_s: float = 300.0,
    ) -> None:
        # The longest silence a request may have before it is given up on: a model starting
        # delays the first frame, and a lost final frame must not hang the caller for ever.
        self.idle_timeout_s = idle_timeout_s
        try:
            self._conn: ClientConnection = connect(
                ws_url,
                additional_headers={"Authorization": f"Bearer {api_key}"},
                open_timeout=open_timeout_s,
                compression=None,
                max_size=None,
                legacy=True,  # held open across calls and closed by close(), not a with block
            )
        except InvalidStatus as exc:
            response = exc.response
            try:
                error = json.loads(response.body or b"{}").get("error") or {}
            except ValueError:
                error = {}
            raise StreamError(response.status_code, error or {"message": str(exc)}) from exc
        self._queues: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._refs = itertools.count(1)
        self._reader = threading.Thread(target=self._read, name="first-stream", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self._reader.is_alive()

    def _read(self) -> None:
        try:
            for message in self._conn:
                frame = json.loads(message)
                with self._lock:
                    target = self._queues.get(str(frame.get("id")))
                if target is not None:
                    target.put(frame)
        except (ConnectionClosed, ValueError):
            pass
        finally:
            with self._lock:
                waiting = list(self._queues.values())
            for q in waiting:
                q.put(_CLOSED)

    def frames(self, action: str, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """The frames of one request, retried pushes dropped; ends after ``done``/``error``."""
        ref = f"{next(self._refs)}-{uuid.uuid4().hex[:8]}"
        inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._queues[ref] = inbox
        try:
            self._conn.send(json.dumps({"action": action, "id": ref, "body": body}))
            last = (0, -1)
            request_id: str | None = None
            while True:
                try:
                    frame = inbox.get(timeout=self.idle_timeout_s)
                except queue.Empty:
                    raise StreamError.of(
                        WaitTimeoutError(
                            f"No frame for {self.idle_timeout_s:g} s"
                            + (
                                f"; the result may still come: GET /v1/requests/{request_id}."
                                if request_id
                                else "."
                            )
                        ),
                        request_id,
                    ) from None
                request_id = frame.get("request_id") or request_id
                kind = frame.get("type")
                if kind == "closed":
                    raise StreamError.of(
                        UpstreamUnavailableError(
                            "The connection closed before the request finished"
                            + (
                                f"; what it ran is kept: GET /v1/requests/{request_id}."
                                if request_id
                                else "."
                            ),
                            code="connection_closed",
                        ),
                        request_id,
                    )
                if kind == "chunk":
                    position = (int(frame.get("seq") or 0), int(frame.get("part") or 0))
                    if position <= last:
                        continue  # a retried push: already shown
                    last = position
                yield frame
                if kind in ("done", "error"):
                    return
        finally:
            with self._lock:
                self._queues.pop(ref, None)

    # Built as the OpenAI SDK builds streamed chunks (its ``model_construct`` makes the nested
    # types without validating): a text_completion chunk's ``finish_reason`` is null until the
    # last, which ``Completion``'s own validation refuses.

    def stream_chat(self, **body: Any) -> Iterator[ChatCompletionChunk]:
        for data in _chunks(self.frames("chat.completions", body), body):
            yield ChatCompletionChunk.model_construct(**data)

    def stream_completion(self, **body: Any) -> Iterator[Completion]:
        for data in _chunks(self.frames("completions", body), body):
            yield Completion.model_construct(**data)


def _chunks(frames: Iterator[dict[str, Any]], body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """OpenAI chunk dicts; the usage chunk last when ``stream_options.include_usage``."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    last: dict[str, Any] | None = None
    for frame in frames:
        if frame["type"] == "chunk":
            last = frame["data"]
            yield last
        elif frame["type"] == "error":
            raise StreamError(int(frame.get("status") or 500), frame["error"], frame["request_id"])
        elif frame["type"] == "done" and include_usage and last is not None:
            base: dict[str, Any] = {
                k: last[k] for k in ("id", "object", "created", "model") if k in last
            }
            yield {**base, "choices": [], "usage": frame["usage"]}


def _where(ws_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = ws_url or os.environ.get("FIRST_WS_URL")
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not url or not key:
        raise ValueError("set FIRST_WS_URL and OPENAI_API_KEY, or pass ws_url= and api_key=")
    return url, key


def stream_chat(
    *, ws_url: str | None = None, api_key: str | None = None, **body: Any
) -> Iterator[ChatCompletionChunk]:
    """One chat completion, streamed over its own connection."""
    with StreamClient(*_where(ws_url, api_key)) as client:
        yield from client.stream_chat(**body)


def stream_completion(
    *, ws_url: str | None = None, api_key: str | None = None, **body: Any
) -> Iterator[Completion]:
    """One (legacy) completion, streamed over its own connection."""
    with StreamClient(*_where(ws_url, api_key)) as client:
        yield from client.stream_completion(**body)
