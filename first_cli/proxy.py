"""``first proxy``: an OpenAI-compatible server on the user's machine, in front of the gateway.

Any OpenAI SDK or tool pointed at it (``OPENAI_BASE_URL=http://127.0.0.1:8088/v1``) streams for
real: ``stream=true`` chat and completions go over the gateway's WebSocket API and come back as
incremental SSE, chunk by chunk as the HPC node pushes them (the gateway's REST route can only
send a buffered SSE body, since a Lambda returns one body). Everything else is forwarded as is;
a non-streaming call that outlives the gateway's wait (504 carrying the request id) is collected
by id (``GET /v1/requests/{id}``), so long generations just work; a collected failure keeps
the stored error's status.

Each streamed request has a WebSocket connection of its own, closed when its SSE body ends. The
protocol has no "cancel" message: a closed connection is how a client says it left. So a caller
that aborts (the SDK closes its response) closes that connection, API Gateway's ``$disconnect``
forgets it, the relay's next push meets ``GoneException`` and answers 410, and the HPC function
stops generating. (One connection shared by a key's streams could not say which one left.)

The caller's ``Authorization`` is used when it sends one, else the proxy's own key.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx  # the OpenAI SDK's HTTP client, installed with it
from websockets.exceptions import InvalidHandshake

from first_cli.client import StreamClient, StreamError

STREAM_ACTIONS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}
# How long a 504'd request is collected for, and how often its record is read.
COLLECT_TIMEOUT_S = 3600.0
COLLECT_INTERVAL_S = 1.0
# What the gateway takes (API Gateway's payload limit), and how long a caller may stay silent.
MAX_BODY_BYTES = 10 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "content-encoding",
}


class Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, gateway_url: str, ws_url: str, api_key: str | None, host: str, port: int
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/").removesuffix("/v1")
        self.ws_url = ws_url
        self.api_key = api_key
        self.http = httpx.Client(base_url=self.gateway_url, timeout=httpx.Timeout(60.0))
        self._streams: set[StreamClient] = set()
        self._lock = threading.Lock()
        # collected: 504s answered with the result read by id; aborted: streams whose caller
        # left before the end (their connection closed, so their generation stopped);
        # gone_before_answer: non-streamed calls whose caller left before the answer came;
        # caller_reset: connections a caller reset between requests.
        self.counts: Counter[str] = Counter()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def open_stream(self, api_key: str) -> StreamClient:
        """A WebSocket connection for one streamed request; ``close_stream`` ends it."""
        client = StreamClient(self.ws_url, api_key)
        with self._lock:
            self._streams.add(client)
        return client

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def close_stream(self, client: StreamClient) -> None:
        with self._lock:
            self._streams.discard(client)
        client.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller that hangs up on a kept-alive connection (the SDK closing its client) is
        # how HTTP ends, not a fault: counted, not printed as a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            self.count("caller_reset")
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            open_streams = list(self._streams)
        for client in open_streams:
            self.close_stream(client)
        self.http.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _key(self) -> str | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        return (
            token.strip() if scheme.lower() == "bearer" and token.strip() else self.server.api_key
        )

    # A caller that sends nothing for this long (headers, body) is hung up on: no thread is
    # held for ever.
    timeout = IDLE_TIMEOUT_S

    def _body(self) -> bytes | None:
        """The body, or None after answering why it cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            self._send_json(411, _error(411, "Send the body with a Content-Length."))
            self.close_connection = True
            return None
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        value = values.pop() if len(values) == 1 else ("" if values else "0")
        if not value.isdigit():
            self._send_json(400, _error(400, "Content-Length must be one non-negative integer."))
            self.close_connection = True  # the body's end is unknown: the connection cannot go on
            return None
        length = int(value)
        if length > MAX_BODY_BYTES:
            self._send_json(413, _error(413, f"Request body exceeds {MAX_BODY_BYTES} bytes."))
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        raw = self._body()
        if raw is None:
            return
        path = self.path.split("?", 1)[0]
        if path in STREAM_ACTIONS:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("stream"):
                self._stream(STREAM_ACTIONS[path], body)
                return
        self._forward(raw)

    def do_GET(self) -> None:  # noqa: N802
        self._forward(None)

    do_DELETE = do_GET

    def _forward(self, raw: bytes | None) -> None:
        key = self._key()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = self.server.http.request(self.command, self.path, headers=headers, content=raw)
            if resp.status_code == 504:
                resp = self._collect(resp, headers) or resp
        except httpx.HTTPError as exc:
            self._send_json(502, _error(502, f"The gateway could not be reached: {exc}"))
            return
        self.send_response(resp.status_code)
        for name, value in resp.headers.items():
            if name.lower() not in _HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        try:
            self.wfile.write(resp.content)
        except (BrokenPipeError, ConnectionResetError):
            self.server.count("gone_before_answer")  # the caller left; nothing to tell it
            self.close_connection = True

    def _collect(self, timeout: httpx.Response, headers: dict[str, str]) -> httpx.Response | None:
        """A 504 names the request: read it by id until it finishes; its result as a response."""
        request_id = timeout.headers.get("x-request-id")
        if not request_id:
            return None
        deadline = time.monotonic() + COLLECT_TIMEOUT_S
        while time.monotonic() < deadline:
            view = self.server.http.get(f"/v1/requests/{request_id}", headers=headers)
            if view.status_code != 200:
                return view
            record = view.json()
            if record.get("status") in ("completed", "failed"):
                self.server.count("collected")
                return _collected(request_id, record)
            time.sleep(COLLECT_INTERVAL_S)
        return None

    def _stream(self, action: str, body: dict[str, Any]) -> None:
        key = self._key()
        if not key:
            self._send_json(401, _error(401, "No API key: send Authorization: Bearer …"))
            return
        try:
            client = self.server.open_stream(key)
        except StreamError as exc:
            self._send_json(exc.status, {"error": exc.error})
            return
        except (OSError, InvalidHandshake) as exc:  # TimeoutError is an OSError
            self._send_json(502, _error(502, f"The WebSocket API could not be reached: {exc}"))
            return
        try:
            self._relay(client, action, body)
        finally:
            # Also when the caller left: the connection's $disconnect is what stops the
            # generation (the relay's next push answers 410).
            self.server.close_stream(client)

    def _relay(self, client: StreamClient, action: str, body: dict[str, Any]) -> None:
        """The request's frames as incremental SSE, until ``done``/``error`` or the caller
        leaves."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = client.frames(action, body)
        try:
            first = next(frames)
        except StreamError as exc:
            self._send_json(exc.status, {"error": exc.error})
            return
        if first["type"] == "error":
            self._send_json(int(first.get("status") or 500), {"error": first["error"]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        if first.get("request_id"):
            self.send_header("x-request-id", first["request_id"])
        self.end_headers()
        last: dict[str, Any] | None = None
        frame: dict[str, Any] | None = first
        try:
            while frame is not None:
                if frame["type"] == "chunk":
                    last = frame["data"]
                    self._event(last)
                elif frame["type"] == "done":
                    if include_usage and last is not None:
                        base = {k: last[k] for k in ("id", "object", "created", "model")}
                        self._event({**base, "choices": [], "usage": frame["usage"]})
                elif frame["type"] == "error":
                    self._event({"error": frame["error"]})
                frame = next(frames, None)
        except StreamError as exc:
            self._event({"error": exc.error})
        except (BrokenPipeError, ConnectionResetError):
            # The caller left. Its connection is closed on the way out (``_stream``), and that
            # $disconnect is what cancels the generation; the gateway learns nothing from this
            # generator closing.
            self.server.count("aborted")
            frames.close()
            return
        self._event("[DONE]")
        self._write(b"")

    def _event(self, obj: Any) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
        self._write(f"data: {data}\n\n".encode())

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _collected(request_id: str, record: dict[str, Any]) -> httpx.Response:
    """A finished request's view as the response the 504 stood for: its result, or its error
    with the status the gateway stored (older gateways name none: 400 or 500 by the type)."""
    headers = {"x-request-id": request_id}
    if record["status"] == "completed":
        return httpx.Response(200, json=record["result"], headers=headers)
    error = record.get("error") or {}
    status = record.get("status_code")
    if not isinstance(status, int) or not 400 <= status < 600:
        status = 400 if error.get("type") == "invalid_request_error" else 500
    return httpx.Response(status, json={"error": error}, headers=headers)


def _error(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def serve(gateway_url: str, ws_url: str, api_key: str | None, port: int, host: str) -> None:
    proxy = Proxy(gateway_url, ws_url, api_key, host, port)
    print(f"first proxy on {proxy.url}/v1 → {proxy.gateway_url} (streams via {ws_url})", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.server_close()
