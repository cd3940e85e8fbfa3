"""The stream relay: an HPC function's push, checked against its capability token, posted to
the WebSocket connection the token names.

A push is ``{"seq": n, "chunks": [<OpenAI chunk>, …]}`` with ``Authorization: Bearer <capability
token>``; each chunk becomes one ``chunk`` frame. Pushes of one request are numbered from 1 and
sent one at a time, so a push whose ``seq`` this process already posted is a retry (its answer
was lost) and is acknowledged without posting again. A retry that reaches another process
(another Lambda container) is posted again with the same ``seq``, and clients drop it
(``frames``). A closed connection answers 410 (``StreamGoneError``): the function stops.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from chalicelib import metrics
from chalicelib.errors import AuthenticationError, BadRequestError, StreamGoneError
from chalicelib.stores.websocket import ConnectionGoneError, ConnectionPoster
from chalicelib.streaming import frames
from chalicelib.streaming.tokens import StreamTokenError, verify

MAX_CHUNKS_PER_PUSH = 1024
# Requests whose last posted seq this process remembers (a warm container serves many).
DEDUP_ENTRIES = 4096


@dataclass(frozen=True)
class Delivery:
    request_id: str
    seq: int
    posted: int  # frames posted; 0 for a retry already posted


class Relay:
    def __init__(
        self,
        key: bytes,
        poster: ConnectionPoster,
        recorder: metrics.MetricsRecorder | None = None,
    ) -> None:
        self._key = key
        self._poster = poster
        self._metrics = recorder
        self._posted: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def push(self, token: str, raw: bytes) -> Delivery:
        outcome, delivery = "refused", None
        try:
            delivery = self._push(token, raw)
            outcome = "posted" if delivery.posted else "duplicate"
            return delivery
        except StreamGoneError:
            outcome = "gone"
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
        seq, chunks = _parse(raw)
        with self._lock:
            last = self._posted.get(claims.request_id, 0)
        if seq <= last:
            self.counts["duplicate_pushes"] += 1
            return Delivery(claims.request_id, seq, 0)
        try:
            for part, data in enumerate(chunks):
                self._poster.post(
                    claims.connection_id,
                    frames.chunk(claims.client_ref, claims.request_id, seq, part, data),
                )
        except ConnectionGoneError as exc:
            self.counts["gone"] += 1
            raise StreamGoneError(
                "The client's connection is closed; stop generating.",
                request_id=claims.request_id,
            ) from exc
        with self._lock:
            self._posted[claims.request_id] = max(seq, self._posted.get(claims.request_id, 0))
            self._posted.move_to_end(claims.request_id)
            while len(self._posted) > DEDUP_ENTRIES:
                self._posted.popitem(last=False)
        return Delivery(claims.request_id, seq, len(chunks))


def _parse(raw: bytes) -> tuple[int, list[dict[str, Any]]]:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequestError("The push is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequestError('A push is {"seq": n, "chunks": [...]}.')
    seq, chunks = body.get("seq"), body.get("chunks")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise BadRequestError("seq must be a positive integer.", param="seq")
    if (
        not isinstance(chunks, list)
        or len(chunks) > MAX_CHUNKS_PER_PUSH
        or not all(isinstance(c, dict) for c in chunks)
    ):
        raise BadRequestError(
            f"chunks must be a list of at most {MAX_CHUNKS_PER_PUSH} objects.", param="chunks"
        )
    return seq, chunks
