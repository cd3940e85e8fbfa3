"""API Gateway's WebSocket API, emulated for the local stack, around the same Chalice app.

A WebSocket server (the ``websockets`` library) turns each connection into the events API
Gateway sends a WebSocket API's Lambda functions, and calls the app's handlers as Lambda would
(``app.websocket_handlers`` names them; ``app.handler_map`` holds the wrapped handlers)::

    handshake          → $connect    (headers, query string); a non-2xx answer refuses it
    each text message  → $default    (body), on a pool of threads like concurrent Lambdas
    a binary message   → closed with 1003, as API Gateway does (it serves text frames only)
    close              → $disconnect

``Connections`` is the management API (``POST`` / ``GET`` / ``DELETE /@connections/{id}``) the
local API server serves, so a boto3 ``apigatewaymanagementapi`` client pointed at that server
(``FIRST_WEBSOCKET_MANAGEMENT_URL``) posts to a connection here exactly as on AWS, and gets a
``GoneException`` (410) for a closed one. As moto does for AWS's APIs, it does not check SigV4
signatures: it listens on the loopback only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chalice.app import Chalice
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

# A post larger than MAX_FRAME_BYTES (128 KB) is refused as API Gateway refuses it (413
# PayloadTooLargeException); a message that large from a client closes its connection (1009).
from chalicelib.stores.websocket import MAX_FRAME_BYTES as MAX_FRAME_BYTES

logger = logging.getLogger(__name__)

API_ID = "local"
# How long a post waits for a connection whose handshake is finishing.
OPEN_WAIT_S = 5.0
_GONE = {"message": "Gone", "__type": "GoneException"}


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat()


def _epoch_ms() -> int:
    return int(time.time() * 1000)


class Connections:
    """The open connections, and the management API over them."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[ServerConnection, int]] = {}
        # Accepted by $connect, handshake not finished yet: a post waits for it (the client may
        # already hold its open socket and have sent a message).
        self._opening: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def expect(self, connection_id: str) -> None:
        with self._lock:
            self._opening[connection_id] = threading.Event()

    def add(self, connection_id: str, connection: ServerConnection) -> None:
        with self._lock:
            self._open[connection_id] = (connection, _epoch_ms())
            opened = self._opening.pop(connection_id, None)
        if opened is not None:
            opened.set()

    def remove(self, connection_id: str) -> None:
        with self._lock:
            self._open.pop(connection_id, None)
            opened = self._opening.pop(connection_id, None)
        if opened is not None:
            opened.set()

    def get(self, connection_id: str) -> tuple[ServerConnection, int] | None:
        with self._lock:
            opening = self._opening.get(connection_id)
        if opening is not None:
            opening.wait(OPEN_WAIT_S)
        with self._lock:
            return self._open.get(connection_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def manage(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One management API call: (status, headers, body)."""
        connection_id = unquote(urlsplit(path).path.removeprefix("/@connections/"))
        entry = self.get(connection_id)
        if entry is None:
            return self._answer(410, _GONE, error="GoneException")
        connection, connected_at = entry
        if method == "POST":
            data = body or b""
            if len(data) > MAX_FRAME_BYTES:
                return self._answer(
                    413, {"message": "Payload too large"}, error="PayloadTooLargeException"
                )
            try:
                connection.send(data.decode("utf-8", errors="replace"))
            except ConnectionClosed:
                self.remove(connection_id)
                return self._answer(410, _GONE, error="GoneException")
            return 200, {}, b""
        if method == "GET":
            host = connection.remote_address[0] if connection.remote_address else "127.0.0.1"
            user_agent = (
                connection.request.headers.get("User-Agent", "") if connection.request else ""
            )
            # The wire names (rest-json locationNames); boto3 hands them out capitalised.
            info = {
                "connectedAt": _iso(connected_at / 1000),
                "identity": {"sourceIp": host, "userAgent": user_agent},
                "lastActiveAt": _iso(time.time()),
            }
            return self._answer(200, info)
        if method == "DELETE":
            connection.close()
            return 204, {}, b""
        return self._answer(405, {"message": f"{method} is not allowed"})

    @staticmethod
    def _answer(
        status: int, body: dict[str, Any], *, error: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if error:
            headers["x-amzn-ErrorType"] = error
        return status, headers, json.dumps(body).encode()


class WsGateway:
    """The WebSocket side of the local API: one server, events to the app's handlers."""

    def __init__(
        self,
        app: Chalice,
        host: str = "127.0.0.1",
        port: int = 8001,
        *,
        stage: str = "local",
        connections: Connections | None = None,
        message_workers: int = 32,
    ) -> None:
        self.app = app
        self.stage = stage
        self.connections = connections if connections is not None else Connections()
        self._messages = ThreadPoolExecutor(message_workers, thread_name_prefix="ws-message")
        self._ids: dict[int, str] = {}
        self._ids_lock = threading.Lock()
        self.server: Server = serve(
            self._serve,
            host,
            port,
            process_request=self._connect,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            server_header=None,
        )

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def shutdown(self) -> None:
        self.server.shutdown()
        self._messages.shutdown(wait=False, cancel_futures=True)

    # -- events -----------------------------------------------------------------------------

    def _handler(self, route_key: str) -> Callable[[dict[str, Any], Any], Any] | None:
        config = self.app.websocket_handlers.get(route_key)
        return None if config is None else self.app.handler_map.get(config.name)

    def _context(self, route_key: str, event_type: str, connection_id: str) -> dict[str, Any]:
        now = _epoch_ms()
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "messageDirection": "IN",
            "stage": self.stage,
            "apiId": API_ID,
            "domainName": self.url.removeprefix("ws://"),
            "connectionId": connection_id,
            "requestId": uuid.uuid4().hex,
            "extendedRequestId": uuid.uuid4().hex,
            "requestTimeEpoch": now,
            "requestTime": formatdate(now / 1000, usegmt=True),
            "identity": {"sourceIp": "127.0.0.1"},
        }

    def _invoke(self, route_key: str, event: dict[str, Any]) -> dict[str, Any]:
        handler = self._handler(route_key)
        if handler is None:
            return {"statusCode": 200}
        try:
            out = handler(event, None)
        except Exception:
            logger.exception("websocket %s handler failed", route_key)
            return {"statusCode": 500}
        return out if isinstance(out, dict) else {"statusCode": 200}

    def _connect(self, connection: ServerConnection, request: Request) -> Response | None:
        connection_id = f"{uuid.uuid4().hex[:16]}="
        url = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        headers = {k: v for k, v in request.headers.raw_items()}
        multi: dict[str, list[str]] = {}
        for k, v in request.headers.raw_items():
            multi.setdefault(k, []).append(v)
        context = self._context("$connect", "CONNECT", connection_id)
        context["connectedAt"] = context["requestTimeEpoch"]
        event = {
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": parse_qs(url.query) or None,
            "requestContext": context,
            "isBase64Encoded": False,
        }
        out = self._invoke("$connect", event)
        status = int(out.get("statusCode") or 200)
        if not 200 <= status < 300:
            body = str(out.get("body") or "")
            response = connection.respond(status, body)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        with self._ids_lock:
            self._ids[id(connection)] = connection_id
        self.connections.expect(connection_id)
        return None

    def _serve(self, connection: ServerConnection) -> None:
        with self._ids_lock:
            connection_id = self._ids.pop(id(connection))
        self.connections.add(connection_id, connection)
        try:
            for message in connection:
                if not isinstance(message, str):
                    # API Gateway's WebSocket API takes text frames only: a binary one closes
                    # the connection with 1003 (unsupported data) before any route sees it.
                    connection.close(CloseCode.UNSUPPORTED_DATA, "Binary frames are not supported")
                    break
                text = message
                context = self._context("$default", "MESSAGE", connection_id)
                context["messageId"] = uuid.uuid4().hex
                event = {"requestContext": context, "body": text, "isBase64Encoded": False}
                self._messages.submit(self._invoke, "$default", event)
        except ConnectionClosed:
            pass  # a client that vanishes without a close frame: disconnected all the same
        finally:
            self.connections.remove(connection_id)
            context = self._context("$disconnect", "DISCONNECT", connection_id)
            context["disconnectStatusCode"] = connection.close_code
            context["disconnectReason"] = connection.close_reason or ""
            self._invoke("$disconnect", {"requestContext": context, "isBase64Encoded": False})
