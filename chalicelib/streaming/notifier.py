"""The poller's side of streaming: the capability for a streaming task, and the last frame.

``task_fields`` is what an HPC function needs to push (the relay URL, a capability token for
this request and connection, the coalescing settings, and the stream dialect's first state when
it has one: ``chalicelib.protocol.dialects``). ``finished`` posts the dialect's closing events
(from the full result and the state the HPC function ended with), then ``done`` (with usage)
or ``error`` (410 ``cancelled`` for a stream stopped before its end) once the outcome is stored, so a client that has its ``done`` reads the request
completed, and ``GET /v1/requests/{id}`` agrees with what streamed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.errors import FirstError, StreamGoneError, error_from_result
from chalicelib.protocol import dialects
from chalicelib.settings import Settings
from chalicelib.stores.websocket import ConnectionGoneError, ConnectionPoster
from chalicelib.streaming import frames
from chalicelib.streaming.tokens import mint_for


class StreamNotifier:
    def __init__(self, settings: Settings, poster: ConnectionPoster, logger: Logger) -> None:
        self._s = settings
        self._poster = poster
        self._log = logger
        self.counts: Counter[str] = Counter()

    def task_fields(self, request_id: str, stream: dict[str, Any]) -> dict[str, Any]:
        token = mint_for(
            self._s.stream_key_bytes,
            request_id,
            str(stream["connection_id"]),
            stream.get("ref"),
            self._s.stream_token_ttl_s,
            dialect=str(stream.get("dialect") or "chat"),
        )
        fields = {
            "relay_url": self._s.stream_relay_url,
            "token": token,
            "flush_ms": self._s.stream_flush_ms,
            "flush_tokens": self._s.stream_flush_tokens,
        }
        if isinstance(stream.get("state"), dict):
            fields["state"] = stream["state"]
        return fields

    def finished(
        self,
        request_id: str,
        stream: dict[str, Any],
        status: str,
        fields: Mapping[str, Any],
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Post the dialect's closing events and the final frame; False when the client is gone
        (the record holds the truth)."""
        ref = stream.get("ref")
        texts = [
            frames.chunk(ref, request_id, frames.CLOSING_SEQ, part, event)
            for part, event in enumerate(self._closing(stream, status, fields, result))
        ]
        if status == "completed":
            stats = fields.get("stream_stats") or {}
            timing = {k: v for k, v in stats.items() if k != "dialect_state"}
            text = frames.done(ref, request_id, fields.get("usage") or {}, timing)
        elif status == "cancelled":
            # Usually nobody is left to read it; a client still connected (its stream could no
            # longer be delivered) learns the end, and where what ran is kept.
            exc: FirstError = StreamGoneError(
                f"The stream was cancelled before it finished; what ran is stored: "
                f"GET /v1/requests/{request_id}.",
                code="cancelled",
                request_id=request_id,
            )
            text = frames.error(ref, request_id, exc)
        else:
            exc = error_from_result(
                fields.get("error") or {}, int(fields.get("status_code") or 500), request_id
            )
            text = frames.error(ref, request_id, exc)
        try:
            for each in [*texts, text]:
                self._poster.post(str(stream["connection_id"]), each)
        except ConnectionGoneError:
            self.counts["final_frames_undelivered"] += 1
            self._log.info(
                "final frame not delivered: client gone", extra={"request_id": request_id}
            )
            return False
        except Exception:  # noqa: BLE001 - the result is stored; the client can fetch it by id
            self.counts["final_frame_errors"] += 1
            self._log.exception("final stream frame failed", extra={"request_id": request_id})
            return False
        return True

    def _closing(
        self,
        stream: dict[str, Any],
        status: str,
        fields: Mapping[str, Any],
        result: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """The dialect's closing events, from the state the HPC function ended with (or the
        first one, when no push was answered)."""
        try:
            dialect = dialects.get(stream.get("dialect"))
        except ValueError:
            self.counts["unknown_dialects"] += 1
            self._log.exception("stream dialect unknown", extra={"dialect": stream.get("dialect")})
            return []
        stats = fields.get("stream_stats") or {}
        last = stats.get("dialect_state") if isinstance(stats, dict) else None
        first = stream.get("state")
        state = dialects.closing_state(
            first if isinstance(first, dict) else None, last if isinstance(last, dict) else None
        )
        error = (fields.get("error") or {}) if status == "failed" else None
        return dialect.closing_events(state, status, result, error)
