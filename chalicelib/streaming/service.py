"""The WebSocket routes' work: ``$connect`` authenticates, ``$default`` admits and enqueues a
streaming request, ``$disconnect`` forgets the connection.

A ``$default`` message is ``{"action": "chat.completions" | "completions" | "responses" |
"messages", "id": CLIENT_REF,
"body": {…OpenAI request body…}}``. It goes through the REST route's checks (validation, model
access, the model's ceiling, rate limits) and the same submit (``Gateway.submit``, with a
``StreamTarget``: the connection and the client's reference on the record); the handler returns
at once, and the answer travels as frames (``frames``): refusals from here, chunks from the HPC
node through the relay, the final ``done`` or ``error`` from the poller once the result is
stored. Many requests may be in flight on one connection. ``open`` is the way in for a request
another dialect's action has already translated into a ``GatewayRequest``.

Each message is authenticated again, through the same authenticator and caches as a REST call
(``$connect`` keeps the caller's token on the connection, sealed: ``chalicelib.auth.sealed``):
a key revoked, or a Globus token gone inactive, after the connection opened is refused within
the same bound as on REST (``auth_cache_ttl_s``), with a 401 error frame, and the connection is
closed.

Cancelling on ``$disconnect`` needs no bookkeeping: the relay's next post to the closed
connection meets ``GoneException`` and tells the HPC function to stop.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import limits, metrics
from chalicelib.auth import Principal, bearer_token
from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.auth.sealed import SealError, seal, unseal
from chalicelib.errors import (
    AuthenticationError,
    BadRequestError,
    FirstError,
    UpstreamUnavailableError,
)
from chalicelib.gateway import Gateway, StreamTarget
from chalicelib.protocol import ChatCompletionRequest, CompletionRequest, parse_body
from chalicelib.protocol.common import GatewayRequest, load_json
from chalicelib.protocol.messages_stream import MessagesAsChat
from chalicelib.protocol.responses_stream import ResponsesAsChat
from chalicelib.registry import Registry
from chalicelib.settings import Settings
from chalicelib.stores.connections import Connection, ConnectionStore
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.websocket import ConnectionGoneError, ConnectionPoster
from chalicelib.streaming import frames

ACTIONS: dict[str, tuple[str, type[GatewayRequest]]] = {
    "chat.completions": ("chat_completions", ChatCompletionRequest),
    "completions": ("completions", CompletionRequest),
    # A Responses body, answered as chat and streamed in the Responses dialect.
    "responses": ("chat_completions", ResponsesAsChat),
    # An Anthropic Messages body, answered as chat and streamed in Anthropic's events.
    "messages": ("chat_completions", MessagesAsChat),
}
# A client's reference is echoed in every frame; keep it a short string.
MAX_CLIENT_REF_CHARS = 128


def connect_token(event: Mapping[str, Any]) -> str:
    """The caller's token: ``Authorization: Bearer …``, or ``?token=`` (browsers cannot set
    headers on a WebSocket)."""
    headers = event.get("headers") or {}
    if any(k.lower() == "authorization" for k in headers):
        return bearer_token(headers)
    token = (event.get("queryStringParameters") or {}).get("token")
    if token:
        return str(token)
    return bearer_token(headers)  # raises: no credentials at all


def _client_ref(frame: dict[str, Any]) -> str | None:
    """The client's reference for its request, echoed in every frame: a short string or none
    (an unusable one is refused, and the refusal carries no id)."""
    ref = frame.get("id")
    return ref if isinstance(ref, str) and len(ref) <= MAX_CLIENT_REF_CHARS else None


class StreamService:
    def __init__(
        self,
        *,
        settings: Settings,
        authenticator: ChainAuthenticator,
        connections: ConnectionStore,
        poster: ConnectionPoster,
        gateway: Gateway,
        registry: Registry,
        logger: Logger,
        limit_store: LimitStore | None = None,
        recorder: metrics.MetricsRecorder | None = None,
    ) -> None:
        self._s = settings
        self._metrics = recorder
        self._auth = authenticator
        self._connections = connections
        self._poster = poster
        self._gateway = gateway
        self._registry = registry
        self._log = logger
        self._limit_store = limit_store
        self.counts: Counter[str] = Counter()

    # -- $connect / $disconnect -----------------------------------------------------------

    def connect(self, connection_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """API Gateway refuses the handshake when ``$connect`` answers other than 2xx."""
        try:
            token = connect_token(event)
            principal = self._auth.authenticate(token)
        except FirstError as exc:
            self._log.info("websocket refused", extra={"status": exc.STATUS_CODE})
            return {"statusCode": exc.STATUS_CODE, "body": json.dumps(exc.to_body())}
        # Without a stream key nothing streams (each message answers 503): nothing to seal with.
        key = self._s.stream_key_bytes
        credential = seal(key, token, connection_id) if key else None
        self._connections.put(connection_id, principal, credential)
        self._log.info("websocket connected", extra={"user": principal.id})
        return {"statusCode": 200}

    def disconnect(self, connection_id: str) -> None:
        self._connections.delete(connection_id)

    # -- $default ---------------------------------------------------------------------------

    def message(self, connection_id: str, text: str) -> str | None:
        """Admit and enqueue one request; the request id, or None after an error frame."""
        ref: str | None = None
        try:
            frame = self._frame(text)
            ref = _client_ref(frame)
            self._check_fields(frame)
            if not self._s.stream_key:
                raise UpstreamUnavailableError("Streaming is not configured on this gateway.")
            principal = self._authenticate(connection_id, self._connections.get(connection_id))
            function, model = self._action(frame)
            req = parse_body(json.dumps(frame.get("body")).encode(), model)
            request_id = self.open(principal, connection_id, ref, function, req)
        except FirstError as exc:
            self._refuse(connection_id, ref, exc)
            if isinstance(exc, AuthenticationError):
                self._close(connection_id)  # its credentials are no good: nothing more here
            return None
        except Exception:  # noqa: BLE001 - logged; the client gets a 500 frame, not silence
            self._log.exception("stream message failed", extra={"connection_id": connection_id})
            self._refuse(
                connection_id, ref, FirstError("The server had an error processing your message.")
            )
            self.counts["failed_messages"] += 1
            return None
        self._log.info(
            "stream request queued",
            extra={"request_id": request_id, "user": principal.id, "model": req.model},
        )
        if self._metrics is not None:
            # A dimension only for registry models: never a name a caller typed.
            known = req.model if req.model in self._registry.model_ids() else None
            metrics.stream_admitted(self._metrics, model=known)
        return request_id

    def _authenticate(self, connection_id: str, connection: Connection | None) -> Principal:
        """The caller, authenticated again with the token it connected with (401 when that
        token is no longer good, the connection is unknown, or its credential does not open)."""
        if connection is None or connection.credential is None:
            raise AuthenticationError("This connection is not authenticated; reconnect.")
        try:
            token = unseal(self._s.stream_key_bytes, connection.credential, connection_id)
        except SealError as exc:
            self.counts["credentials_unopened"] += 1
            raise AuthenticationError(
                "This connection's credentials cannot be checked; reconnect."
            ) from exc
        return self._auth.authenticate(token)

    def _close(self, connection_id: str) -> None:
        try:
            self._poster.close(connection_id)
        except Exception:  # noqa: BLE001 - refused anyway: every message on it gets the 401
            self.counts["close_errors"] += 1
            self._log.exception("connection not closed", extra={"connection_id": connection_id})
        else:
            self.counts["connections_closed"] += 1
            self._log.info("websocket closed: credentials refused")

    def _frame(self, text: str | None) -> dict[str, Any]:
        # The REST body's parser: nesting that would make json.loads recurse past Python's
        # limit (a RecursionError, not a ValueError), NaN, lone surrogates are all a 400.
        try:
            frame = load_json((text or "").encode("utf-8", "surrogatepass"))
        except BadRequestError as exc:
            raise BadRequestError(exc.message.replace("request body", "message")) from exc
        if not isinstance(frame, dict):
            raise BadRequestError('The message must be {"action", "id", "body"}.')
        return frame

    def _check_fields(self, frame: dict[str, Any]) -> None:
        if frame.get("id") is not None and _client_ref(frame) is None:
            raise BadRequestError(
                f"id must be a string of at most {MAX_CLIENT_REF_CHARS} characters.", param="id"
            )
        if not isinstance(frame.get("body"), dict):
            raise BadRequestError("body must be a JSON object (an OpenAI request).", param="body")

    def _action(self, frame: dict[str, Any]) -> tuple[str, type[GatewayRequest]]:
        action = frame.get("action")
        if action not in ACTIONS:
            raise BadRequestError(
                f"Unknown action {action!r}; expected one of {sorted(ACTIONS)}.", param="action"
            )
        return ACTIONS[str(action)]

    def open(
        self,
        principal: Principal,
        connection_id: str,
        ref: str | None,
        function: str,
        req: GatewayRequest,
    ) -> str:
        """Check, admit and submit one streamed request (its answer goes to ``connection_id``
        as frames carrying ``ref``); its id. Raises the error its refusal frame carries."""
        self._gateway.authorize(principal, req, function)
        stream_hold = self._stream_slot(principal)
        try:
            admission = self._gateway.admit(principal, req)
        except Exception:
            self._release(stream_hold)
            raise
        hold = {**(admission.hold or {}), **(stream_hold or {})} or None
        # The gateway gives ``hold`` back if the request cannot be submitted.
        return self._gateway.submit(
            principal,
            function,
            req,
            hold,
            stream=StreamTarget(connection_id, ref),
            # A dialect's action is its route's (responses, messages): counted under that name.
            route=req.stream_dialect().get("dialect"),
        )

    def _stream_slot(self, principal: Principal) -> dict[str, Any] | None:
        """Take one of the user's ``stream_max_per_user`` slots (429 when none is free); the
        poller gives it back when the request finishes, with its rate-limit hold."""
        limit = self._s.stream_max_per_user
        if not limit or self._limit_store is None:
            return None
        plan = limits.stream_slot(principal.id, limit, time.time(), self._s.limits_inflight_ttl_s)
        if self._limit_store.admit(plan).refused is not None:
            raise limits.streams_refused(limit)
        return {"streams": plan.updates[0].key}

    def _release(self, hold: dict[str, Any] | None) -> None:
        if hold is not None and self._limit_store is not None:
            self._limit_store.release(hold, 0)

    def _refuse(self, connection_id: str, ref: str | None, exc: FirstError) -> None:
        self.counts[f"refused_{exc.STATUS_CODE}"] += 1
        if self._metrics is not None:
            metrics.stream_refused(
                self._metrics, status=exc.STATUS_CODE, code=exc.to_body()["error"]["code"]
            )
        try:
            self._poster.post(connection_id, frames.error(ref, exc.request_id, exc))
        except ConnectionGoneError:
            self.counts["refusals_undelivered"] += 1
            self._log.info("refusal not delivered: connection gone")
