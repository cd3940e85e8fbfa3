"""The stream relay: an HPC function's push, checked against its capability token, posted to
the WebSocket connection the token names.

A push is ``{"seq": n, "chunks": [<OpenAI chunk>, …], "state": {…}}`` with ``Authorization: Bearer
<capability token>``; the token's dialect (``chalicelib.protocol.dialects``) turns the chunks into
events, from the stream's ``state`` (the one the previous push was answered with), and each event
becomes one ``chunk`` frame (``part`` 0, 1, …); the answer carries the state after them. Chat is
the identity: a chunk is its event, and its state stays empty. Pushes of one request are
numbered from 1 (at most ``MAX_SEQ``) and sent one at a time, so this process remembers the last
``(seq, part)`` it posted for each request: a push at or below it is a retry whose answer was
lost, and only its parts not posted yet are posted. A retry that reaches another process (another
Lambda container) is posted again with the same numbers, and clients drop it (``frames``). An
empty push posts nothing and moves nothing.

A push is delivered whole or refused: every frame is rendered and measured before the first is
posted, and one over API Gateway's 128 KB refuses the push (413, nothing posted; the sender
splits its chunks under the limit). Refused with 410 (``StreamGoneError``), the function stops:
the connection is closed (``connection_gone``), or the request has finished
(``request_finished``: its record is terminal, read at most every ``recheck_s`` per request and
remembered once terminal, so a token cannot keep posting after ``done`` for the rest of its life).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from chalicelib import metrics
from chalicelib.errors import (
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    StreamGoneError,
)
from chalicelib.protocol import dialects
from chalicelib.protocol.bounds import INT32_MAX
from chalicelib.stores.requests import TERMINAL
from chalicelib.stores.websocket import (
    MAX_FRAME_BYTES,
    ConnectionGoneError,
    ConnectionPoster,
    FrameTooLargeError,
)
from chalicelib.streaming import frames
from chalicelib.streaming.tokens import StreamTokenError, verify

MAX_CHUNKS_PER_PUSH = 1024
# A push carries at least one token (the sender pushes nothing else), and token counts are int32
# everywhere: no stream gets near this. Larger numbers would also lose precision in JavaScript.
MAX_SEQ = INT32_MAX
# Requests this process remembers (last posted frame, status); a warm container serves many.
DEDUP_ENTRIES = 4096


class RequestStatus(Protocol):
    def status(self, request_id: str) -> str | None:
        """The request's status, or None when there is no such (unexpired) request."""
        ...


@dataclass(frozen=True)
class Delivery:
    request_id: str
    seq: int
    posted: int  # frames posted; 0 for a retry already posted, or an empty push
    # The dialect's stream state after this push: the sender sends it with the next one.
    state: dict[str, Any] | None = None


@dataclass
class _Stream:
    """What this process knows of one request's stream."""

    seq: int = 0  # the last frame posted: (seq, part)
    part: int = -1
    status: str | None = None  # as last read, at checked_at (the clock's seconds)
    checked_at: float = float("-inf")


class Relay:
    def __init__(
        self,
        key: bytes,
        poster: ConnectionPoster,
        recorder: metrics.MetricsRecorder | None = None,
        *,
        requests: RequestStatus | None = None,
        recheck_s: float = 1.0,
        logger: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._poster = poster
        self._metrics = recorder
        self._requests = requests
        self._recheck_s = recheck_s
        self._log = logger or Logger(service="first-relay")
        self._clock = clock
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def push(self, token: str, raw: bytes) -> Delivery:
        outcome, delivery = "refused", None
        try:
            delivery = self._push(token, raw)
            outcome = "posted" if delivery.posted else "duplicate"
            return delivery
        except StreamGoneError as exc:
            outcome = "finished" if exc.code == "request_finished" else "gone"
            raise
        except PayloadTooLargeError:
            outcome = "too_large"
            raise
        finally:
            if self._metrics is not None:
                posted = delivery.posted if delivery is not None else 0
                metrics.relay_push(self._metrics, outcome=outcome, frames=posted)

    def _push(self, token: str, raw: bytes) -> Delivery:
        if not self._key:
            raise AuthenticationError("Streaming is not configured.", code="invalid_stream_token")
        try:
            claims = verify(self._key, token)
        except StreamTokenError as exc:
            self.counts[f"token_{exc.reason.replace(' ', '_')}"] += 1
            code = "expired_stream_token" if exc.reason == "expired" else "invalid_stream_token"
            raise AuthenticationError(
                f"Capability token refused: {exc.reason}.", code=code
            ) from exc
        seq, chunks, before = _parse(raw)
        request_id = claims.request_id
        self._check_live(request_id)
        try:
            dialect = dialects.get(claims.dialect)
        except ValueError as exc:  # a token minted by a newer gateway: not this push's fault
            raise BadRequestError(str(exc), param="dialect") from exc
        # Rendered whole, also for a retry: the same state gives the same events and parts.
        events, state = dialects.push_events(dialect, before, chunks)
        state_out = state if before is not None or state else None
        if not events:
            self.counts["empty_pushes"] += 1
            return Delivery(request_id, seq, 0, state_out)
        with self._lock:
            stream = self._stream(request_id)
            last = (stream.seq, stream.part)
        start = last[1] + 1 if seq == last[0] else 0
        if seq < last[0] or start >= len(events):
            self.counts["duplicate_pushes"] += 1
            return Delivery(request_id, seq, 0, state_out)
        texts = [
            frames.chunk(claims.client_ref, request_id, seq, part, events[part])
            for part in range(start, len(events))
        ]
        for part, text in enumerate(texts, start):
            size = len(text.encode())
            if size > MAX_FRAME_BYTES:
                self.counts["frames_too_large"] += 1
                raise PayloadTooLargeError(
                    f"chunks[{part}] makes a frame of {size} bytes; a WebSocket frame is at "
                    f"most {MAX_FRAME_BYTES} bytes (API Gateway's limit): split it. Nothing of "
                    "this push was posted.",
                    param="chunks",
                    request_id=request_id,
                )
        posted = 0
        for part, text in enumerate(texts, start):
            try:
                self._poster.post(claims.connection_id, text)
            except ConnectionGoneError as exc:
                self.counts["gone"] += 1
                raise StreamGoneError(
                    "The client's connection is closed; stop generating.", request_id=request_id
                ) from exc
            except FrameTooLargeError as exc:  # measured above; API Gateway's own count differs
                self.counts["frames_too_large"] += 1
                raise PayloadTooLargeError(
                    f"chunks[{part}] was refused as larger than a WebSocket frame may be "
                    f"({MAX_FRAME_BYTES} bytes): split it.",
                    param="chunks",
                    request_id=request_id,
                ) from exc
            posted += 1
            # Recorded frame by frame: a retry after a failure part-way posts only the rest.
            with self._lock:
                stream = self._stream(request_id)
                if (seq, part) > (stream.seq, stream.part):
                    stream.seq, stream.part = seq, part
        return Delivery(request_id, seq, posted, state_out)

    def _stream(self, request_id: str) -> _Stream:
        """This process's entry for ``request_id`` (the lock held), the newest in the LRU."""
        stream = self._streams.get(request_id)
        if stream is None:
            stream = self._streams[request_id] = _Stream()
            while len(self._streams) > DEDUP_ENTRIES:
                self._streams.popitem(last=False)
        self._streams.move_to_end(request_id)
        return stream

    def _check_live(self, request_id: str) -> None:
        """410 ``request_finished`` when the request is terminal (or gone from the table)."""
        if self._requests is None:
            return
        now = self._clock()
        with self._lock:
            stream = self._stream(request_id)
            status, fresh = stream.status, now - stream.checked_at < self._recheck_s
        if not (_finished(status) or fresh):
            try:
                status = self._requests.status(request_id) or "missing"
            except Exception:  # noqa: BLE001 - a bound, not the authorization: the token is
                self.counts["status_read_errors"] += 1
                self._log.exception("request status unread", extra={"request_id": request_id})
                return
            with self._lock:
                stream = self._stream(request_id)
                stream.status, stream.checked_at = status, now
        if _finished(status):
            self.counts["pushes_after_finish"] += 1
            raise StreamGoneError(
                f"Request {request_id} is {status}: its stream takes no more pushes.",
                code="request_finished",
                request_id=request_id,
            )


def _finished(status: str | None) -> bool:
    return status == "missing" or status in TERMINAL


def _parse(raw: bytes) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # nested past the parser's depth: not a 500
        raise BadRequestError("The push is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequestError('A push is {"seq": n, "chunks": [...]}.')
    seq, chunks = body.get("seq"), body.get("chunks")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise BadRequestError(f"seq must be an integer from 1 to {MAX_SEQ}.", param="seq")
    if (
        not isinstance(chunks, list)
        or len(chunks) > MAX_CHUNKS_PER_PUSH
        or not all(isinstance(c, dict) for c in chunks)
    ):
        raise BadRequestError(
            f"chunks must be a list of at most {MAX_CHUNKS_PER_PUSH} objects.", param="chunks"
        )
    state = body.get("state")
    if state is not None and not isinstance(state, dict):
        raise BadRequestError(
            "state must be the object the last push was answered with.", param="state"
        )
    return seq, chunks, state
