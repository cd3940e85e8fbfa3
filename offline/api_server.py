"""The local API: the real Chalice app behind a small HTTP server of ours.

``chalice local`` serves one request per ~44 ms to keep-alive clients (Nagle's algorithm) and has
no WebSocket support, so this server wraps Chalice's ``LocalGateway`` (HTTP request → API Gateway
event → the app → HTTP response) with Nagle off and one thread per connection. WebSocket routes
(API Gateway's $connect/$default/$disconnect and the @connections API) mount beside it on the
same ``ApiServer`` when they come: ``handle`` is the only HTTP entry point.

It refuses what API Gateway refuses before the Lambda runs, and every refusal is an OpenAI error
(the AWS side gets the same from ``infra/api-gateway-responses.json``): a path no route matches
(404 ``unknown_url``), a body over 10 MB (413), a bad or missing ``Content-Length`` (400/411), a
huge URL or header block (414/431). A client cannot hold a thread for ever: idle connections and
slow bodies time out, and the number of connections served at once is bounded (503 beyond).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import ForbiddenError, LocalGateway, LocalGatewayException

from chalicelib.http import error_body
from offline.ws_gateway import Connections, WsGateway

API_GATEWAY_MAX_BODY = 10 * 1024 * 1024
# A keep-alive connection with no request for this long is closed. Every socket read waits at
# most this long, so a request line and headers that stop arriving end the connection too.
IDLE_TIMEOUT_S = 30.0
# A body must arrive whole within this long after its headers: one shorter than its
# Content-Length gets a 400 then, instead of a handler thread that waits for bytes never sent.
BODY_TIMEOUT_S = 10.0
# One thread per connection, at most this many at once; past it a connection gets a 503.
MAX_CONNECTIONS = 512
# The listen backlog. socketserver's default of 5 drops a burst of connects, which then wait for
# SYN retransmits (1 s, 3 s …); the kernel caps it at net.core.somaxconn.
REQUEST_QUEUE_SIZE = 1024
# API Gateway allows 10,240 bytes for the request line and headers; we bound each part.
MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 10240

# The management API's path, under an optional stage: ``[/{stage}]/@connections/{id}``.
_MANAGEMENT_PATH = re.compile(r"^(?:/[^/@]+)?(/@connections/.*)$")

# The `code` of errors this server answers itself.
_CODES = {
    404: "unknown_url",
    405: "method_not_allowed",
    411: "length_required",
    413: "request_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "request_header_fields_too_large",
    501: "not_implemented",
    503: "overloaded",
}
_LENGTH = re.compile(r"[0-9]{1,15}")
logger = logging.getLogger(__name__)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = REQUEST_QUEUE_SIZE

    def __init__(
        self,
        app: Chalice,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        connections: Connections | None = None,
    ) -> None:
        self.gateway = LocalGateway(app, Config.create(chalice_app=app, app_name=app.app_name))
        # The WebSocket API's management routes (/@connections/{id}), when one runs beside.
        self.connections = connections
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """503 on the accepting thread, without reading the request: starting a thread for it
        is what the bound prevents. A client that already sent its request may see a reset
        instead (unread data on close); either way it may retry."""
        body = json.dumps(
            error_body(
                503,
                f"The server is serving {self.max_connections} connections; retry.",
                "overloaded",
            )
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            sock.settimeout(1.0)
            sock.sendall(head.encode() + body)
        except OSError as exc:
            logger.info("could not send 503 to a refused connection: %s", exc)
        finally:
            self.shutdown_request(sock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ApiServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the app logs
        pass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.path) > MAX_URL_BYTES:
            self.send_error(414, f"The URL is longer than {MAX_URL_BYTES} bytes.")
            return False
        if sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_HEADER_BYTES:
            self.send_error(431, f"The request headers exceed {MAX_HEADER_BYTES} bytes.")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """``BaseHTTPRequestHandler`` answers framing errors (a bad request line, a URL or
        header over its limits, an unknown method) with an HTML page; ours are OpenAI JSON."""
        text = message or self.responses.get(code, ("Error",))[0]
        self._error(code, text if text.endswith(".") else f"{text}.")

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        # The request may not have been read to its end: nothing else on this connection.
        self.close_connection = True
        if not self.request_version.startswith("HTTP/1"):
            # A request line too bad to name its version: answer as HTTP/1.1, with a status
            # line (as "HTTP/0.9" the base class would send the bare body).
            self.request_version = self.protocol_version
        body = json.dumps(error_body(status, message, code or _CODES.get(status)))
        self._send(status, {"Content-Type": "application/json", "Connection": "close"}, body)

    def _content_length(self) -> int | None:
        """The body's length, or None after answering why it cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            self._error(
                411, "Send the body with a Content-Length; chunked bodies are not accepted."
            )
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return 0
        value = values.pop()
        if values or not _LENGTH.fullmatch(value):
            self._error(400, "Content-Length must be one non-negative integer.")
            return None
        length = int(value)
        if length > API_GATEWAY_MAX_BODY:
            self._error(413, f"Request body exceeds {API_GATEWAY_MAX_BODY} bytes.")
            return None
        return length

    def _read_body(self, length: int) -> bytes | None:
        """The body, read within ``body_timeout_s`` in all (a byte a second does not stretch it),
        or None after a 400 when fewer than ``length`` bytes came."""
        deadline = time.monotonic() + self.server.body_timeout_s
        chunks: list[bytes] = []
        received = 0
        try:
            while received < length:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    break
                self.connection.settimeout(remaining_s)
                chunk = self.rfile.read1(min(length - received, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            pass  # answered below: the body is short
        finally:
            self.connection.settimeout(self.server.idle_timeout_s)
        if received < length:
            self._error(
                400,
                f"The request body ended after {received} of the {length} bytes its "
                "Content-Length announced.",
            )
            return None
        return b"".join(chunks)

    def _handle(self) -> None:
        length = self._content_length()
        if length is None:
            return
        body = self._read_body(length) if length else None
        if length and body is None:
            return
        path = urlsplit(self.path).path
        # A management client's endpoint may name the stage, as on AWS (…amazonaws.com/{stage}).
        managed = _MANAGEMENT_PATH.match(path)
        if managed and self.server.connections is not None:
            status, headers, payload = self.server.connections.manage(
                self.command, managed.group(1), body
            )
            self._send(status, headers, payload)
            return
        try:
            response = self.server.gateway.handle_request(
                method=self.command, path=self.path, headers=dict(self.headers), body=body
            )
        except ForbiddenError:
            # LocalGateway's answer (AWS's 403 "Missing Authentication Token") for a path no
            # route matches: this app has no authorizers, so it means nothing else here.
            self._error(404, f"Invalid URL ({self.command} {path[:200]}).")
            return
        except LocalGatewayException as exc:
            self._error(exc.CODE, f"The request was refused ({exc.CODE}).")
            return
        except Exception:
            logger.exception("local gateway failed on %s %s", self.command, path[:200])
            self._error(500, "The server had an error processing your request.")
            return
        headers = dict(response["headers"])
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(values)
        payload = response.get("body") or b""
        if response.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        self._send(response["statusCode"], headers, payload)

    def _send(self, status: int, headers: dict[str, str], body: str | bytes) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FIRST local API server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ws-port", type=int, help="serve the WebSocket API on this port too")
    args = parser.parse_args(argv)
    from app import app

    connections = Connections() if args.ws_port else None
    server = ApiServer(app, args.host, args.port, connections=connections)
    if connections is not None:
        ws = WsGateway(app, args.host, args.ws_port, connections=connections)
        threading.Thread(target=ws.serve_forever, name="ws-gateway", daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
