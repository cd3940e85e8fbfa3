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

The caller's ``Authorization`` (or, from Anthropic's clients, ``x-api-key``) is used when it sends
one, else the proxy's own key. ``/v1/messages`` streams in Anthropic's events, its refusals in
Anthropic's error shape.

HTTP is uvicorn's (h11) and starlette's: framing, keep-alive and resets are theirs. What the
proxy adds at that level is policy, in ``_CallerProtocol``: a caller silent for
``idle_timeout_s`` is hung up on (also before its first request and in the middle of a body,
where uvicorn waits for ever), and a request h11 cannot parse (a ``Content-Length`` of ``abc``,
``-1`` or two values) is answered with an OpenAI error, not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import h11
import httpx2 as httpx  # the OpenAI SDK's HTTP client, installed with it
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol
from websockets.exceptions import InvalidHandshake

from chalicelib.errors import (
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    FirstError,
    LengthRequiredError,
    PayloadTooLargeError,
    error_from_body,
)
from chalicelib.protocol import dialects
from chalicelib.protocol.messages import speaks_anthropic
from first_cli.client import StreamClient, StreamError

STREAM_ACTIONS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
# The stream dialect of each action (chalicelib.protocol.dialects): how its events are framed.
ACTION_DIALECTS: dict[str, str] = {"responses": "responses", "messages": "messages"}
# How long a 504'd request is collected for, and how often its record is read.
COLLECT_TIMEOUT_S = 3600.0
COLLECT_INTERVAL_S = 1.0
# What the gateway takes (API Gateway's payload limit), and how long a caller may stay silent.
MAX_BODY_BYTES = 10 * 1024 * 1024
IDLE_TIMEOUT_S = 60.0
# The stream client is synchronous: each stream waits for its next frame on a thread. anyio's
# default pool (40) would make the 41st stream wait for another to end.
MAX_STREAM_THREADS = 1024
# On Ctrl-C, streams still open get this long to end before they are cancelled (and their
# WebSocket connections closed, which stops their generations).
SHUTDOWN_GRACE_S = 5
# uvicorn's default; socketserver's 5 would drop a burst of connects (retried after 1 s, 3 s…).
LISTEN_BACKLOG = 2048
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Not copied between the caller and the gateway: hop-by-hop, or set again by the side that
# sends (lengths and encodings after httpx decodes; uvicorn's own Date and Server).
_NOT_COPIED = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "content-encoding",
    "date",
    "server",
}
T = TypeVar("T")


class Proxy:
    """The proxy, bound to its port on creation; ``serve_forever`` serves it until
    ``shutdown``; ``server_close`` closes what is left (the names ``socketserver`` uses)."""

    def __init__(
        self,
        gateway_url: str,
        ws_url: str,
        api_key: str | None,
        host: str,
        port: int,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/").removesuffix("/v1")
        self.ws_url = ws_url
        self.api_key = api_key
        self._socket = _listen(host, port)
        self.server_address: tuple[str, int] = self._socket.getsockname()[:2]
        self._streams: set[StreamClient] = set()
        self._lock = threading.Lock()
        # collected: 504s answered with the result read by id; aborted: streams whose caller
        # left before the end (their connection closed, so their generation stopped);
        # gone_before_answer: non-streamed calls whose caller left before the answer came.
        self.counts: Counter[str] = Counter()
        self._http: httpx.AsyncClient | None = None
        self._threads: anyio.CapacityLimiter | None = None
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=METHODS)], lifespan=self._lifespan
        )
        config = uvicorn.Config(
            app,
            http=_caller_protocol(idle_timeout_s),
            ws="none",
            lifespan="on",
            loop="asyncio",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            log_config=None,  # leave the process's logging as it is
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._serving = threading.Event()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait until it has returned."""
        self._server.should_exit = True
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        self._socket.close()
        with self._lock:
            open_streams = list(self._streams)
        for client in open_streams:
            self.close_stream(client)

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def open_stream(self, api_key: str) -> StreamClient:
        """A WebSocket connection for one streamed request; ``close_stream`` ends it."""
        client = StreamClient(self.ws_url, api_key)
        with self._lock:
            self._streams.add(client)
        return client

    def close_stream(self, client: StreamClient) -> None:
        with self._lock:
            if client not in self._streams:
                return  # closed already
            self._streams.discard(client)
        client.close()

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._threads = anyio.CapacityLimiter(MAX_STREAM_THREADS)
        async with httpx.AsyncClient(
            base_url=self.gateway_url, timeout=httpx.Timeout(60.0)
        ) as self._http:
            yield

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        # abandon_on_cancel: a caller that leaves is not kept waiting for a frame; the thread
        # ends when the stream's connection is closed (its reader wakes every waiter).
        return await anyio.to_thread.run_sync(
            func, *args, limiter=self._threads, abandon_on_cancel=True
        )

    def _key(self, request: Request) -> str | None:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        # Anthropic's clients send their key as x-api-key.
        return (request.headers.get("x-api-key") or "").strip() or self.api_key

    async def _handle(self, request: Request) -> Response:
        refused = _unreadable(request)
        if refused is not None:
            return _error_response(refused, close=True)
        try:
            raw = await request.body()
        except ClientDisconnect:
            # Gone, or hung up on (silent for idle_timeout_s) in the middle of its body.
            self.count("gone_before_answer")
            return Response(status_code=400)
        if request.method == "POST" and request.url.path in STREAM_ACTIONS:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("stream") and not _gateway_state(body):
                return await self._stream(request, STREAM_ACTIONS[request.url.path], body)
        return await self._forward(request, raw)

    async def _forward(self, request: Request, raw: bytes) -> Response:
        assert self._http is not None  # set by the lifespan, before any request
        key = self._key(request)
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name not in _NOT_COPIED and not (key and name == "authorization")
        ]
        if key:
            headers.append(("authorization", f"Bearer {key}"))
        target = request.scope["raw_path"].decode("latin-1")
        if request.scope["query_string"]:
            target += "?" + request.scope["query_string"].decode("latin-1")
        try:
            resp = await self._http.request(request.method, target, headers=headers, content=raw)
            if resp.status_code == 504:
                resp = await self._collect(request, resp, headers) or resp
        except httpx.HTTPError as exc:
            return _error_response(BadGatewayError(f"The gateway could not be reached: {exc}"))
        if await request.is_disconnected():
            self.count("gone_before_answer")  # the caller left; nothing to tell it
        answer = Response(resp.content, status_code=resp.status_code)
        answer.raw_headers += [
            (name.lower(), value)
            for name, value in resp.headers.raw
            if name.decode("latin-1").lower() not in _NOT_COPIED
        ]
        return answer

    async def _collect(
        self, request: Request, timeout: httpx.Response, headers: list[tuple[str, str]]
    ) -> httpx.Response | None:
        """A 504 names the request: read it by id until it finishes; its result as a response."""
        assert self._http is not None
        request_id = timeout.headers.get("x-request-id")
        if not request_id:
            return None
        deadline = time.monotonic() + COLLECT_TIMEOUT_S
        while time.monotonic() < deadline and not await request.is_disconnected():
            view = await self._http.get(f"/v1/requests/{request_id}", headers=headers)
            if view.status_code != 200:
                return view
            record = view.json()
            if record.get("status") in ("completed", "failed"):
                self.count("collected")
                return _collected(request_id, record)
            await asyncio.sleep(COLLECT_INTERVAL_S)
        return None

    async def _stream(self, request: Request, action: str, body: dict[str, Any]) -> Response:
        key = self._key(request)
        if not key:
            return _error_response(AuthenticationError("No API key: send Authorization: Bearer …"))
        try:
            client = await self._in_thread(self.open_stream, key)
        except StreamError as exc:
            return JSONResponse({"error": exc.error}, exc.status)
        except (OSError, InvalidHandshake) as exc:  # TimeoutError is an OSError
            return _error_response(
                BadGatewayError(f"The WebSocket API could not be reached: {exc}")
            )
        frames = client.frames(action, body)
        try:
            first = await self._in_thread(next, frames, None)
        except StreamError as exc:
            first = {"type": "error", "status": exc.status, "error": exc.error}
        except BaseException:
            await self._close(client)
            raise
        if first is None or first["type"] == "error":
            await self._close(client)
            if first is None:
                return _error_response(BadGatewayError("The stream ended before an answer."))
            status = int(first.get("status") or 500)
            if speaks_anthropic(request.url.path):
                refused = error_from_body(first["error"])
                status = refused.ANTHROPIC_STATUS or status
                return JSONResponse(refused.to_anthropic_body(), status)
            return JSONResponse({"error": first["error"]}, status)
        headers = {"Cache-Control": "no-cache"}
        if first.get("request_id"):
            headers["x-request-id"] = first["request_id"]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        dialect = dialects.get(ACTION_DIALECTS.get(action))
        return StreamingResponse(
            self._events(client, frames, first, include_usage, dialect),
            media_type="text/event-stream",
            headers=headers,
            # Once the body's last chunk is out: the caller does not wait for the close.
            background=BackgroundTask(self._close, client),
        )

    async def _events(
        self,
        client: StreamClient,
        frames: Generator[dict[str, Any], None, None],
        first: dict[str, Any],
        include_usage: bool,
        dialect: dialects.Dialect = dialects.CHAT,
    ) -> AsyncGenerator[bytes, None]:
        """The request's frames as SSE events, until ``done``/``error`` or the caller leaves
        (starlette then cancels this generator)."""
        last: dict[str, Any] | None = None
        frame: dict[str, Any] | None = first
        finished = False
        try:
            try:
                while frame is not None:
                    if frame["type"] == "chunk":
                        last = frame["data"]
                        yield dialect.sse(last).encode()
                    elif frame["type"] == "done":
                        # Chat's usage chunk comes from the done frame; other dialects' closing
                        # events came as chunks before it.
                        if dialect is dialects.CHAT and include_usage and last is not None:
                            base = {k: last[k] for k in ("id", "object", "created", "model")}
                            yield _event({**base, "choices": [], "usage": frame["usage"]})
                    elif frame["type"] == "error":
                        yield dialect.sse_error(frame["error"], last).encode()
                    frame = await self._in_thread(next, frames, None)
            except StreamError as exc:
                yield dialect.sse_error(exc.error, last).encode()
            yield dialect.sse_end().encode()
            finished = True
        except (anyio.get_cancelled_exc_class(), GeneratorExit):
            # The caller left. Its connection is closed on the way out, and that $disconnect
            # is what cancels the generation: the gateway learns nothing from this generator
            # ending.
            self.count("aborted")
            raise
        finally:
            if not finished:  # else the response's background task closes it
                await self._close(client)

    async def _close(self, client: StreamClient) -> None:
        # Shielded: also when the caller's leaving cancelled the stream.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close_stream, client, limiter=self._threads)


def _gateway_state(body: dict[str, Any]) -> bool:
    """A Responses turn that continues a stored conversation: the gateway rebuilds it on its
    REST route only, so it is forwarded there (a buffered stream) rather than streamed live."""
    return body.get("previous_response_id") is not None


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a caller may connect as soon as ``Proxy`` exists (the
    kernel queues it until uvicorn accepts). Made as asyncio makes its own, with ``proto``
    IPPROTO_TCP: asyncio turns Nagle's algorithm off only on such sockets (``create_server``'s
    proto 0 left it on: ~40 ms more per request, each response being two writes)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _unreadable(request: Request) -> FirstError | None:
    """Why the request's body will not be read (h11 has refused a ``Content-Length`` that is
    not one non-negative integer already), or None."""
    if "transfer-encoding" in request.headers:
        return LengthRequiredError("Send the body with a Content-Length.")
    length = request.headers.get("content-length")
    if length is not None and int(length) > MAX_BODY_BYTES:
        return PayloadTooLargeError(f"Request body exceeds {MAX_BODY_BYTES} bytes.")
    return None


def _error_response(exc: FirstError, *, close: bool = False) -> JSONResponse:
    headers = dict(exc.headers)
    if close:
        headers["Connection"] = "close"  # the body is left unread: the connection cannot go on
    return JSONResponse(exc.to_body(), exc.STATUS_CODE, headers)


def _event(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


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


def _caller_protocol(idle_timeout_s: float) -> type[H11Protocol]:
    class _CallerProtocol(H11Protocol):
        """uvicorn's HTTP/1.1, with the proxy's policy on callers (see the module's doc)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Between requests (uvicorn's own timer; typed int, used as call_later's float).
            self.timeout_keep_alive = idle_timeout_s  # type: ignore[assignment]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_caller()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._wait_for_caller()

        def _wait_for_caller(self) -> None:
            # uvicorn's keep-alive timer runs only between requests; waiting for a request's
            # head or body, it would wait for ever.
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._unset_keepalive_if_required()
                if not self.transport.is_closing():
                    self.timeout_keep_alive_task = self.loop.call_later(
                        idle_timeout_s, self._hang_up
                    )

        def _hang_up(self) -> None:
            # Closing is enough: connection_lost tells h11 and, mid-body, the app (its body
            # read raises ClientDisconnect).
            if not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # Called from uvicorn's ``except h11.RemoteProtocolError`` block: that error says
            # what was wrong.
            cause = sys.exc_info()[1]
            error = BadRequestError(
                f"The request is not valid HTTP/1.1: {cause or msg}".rstrip(".") + "."
            )
            body = json.dumps(error.to_body()).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

    return _CallerProtocol


def serve(gateway_url: str, ws_url: str, api_key: str | None, port: int, host: str) -> None:
    proxy = Proxy(gateway_url, ws_url, api_key, host, port)
    print(f"first proxy on {proxy.url}/v1 → {proxy.gateway_url} (streams via {ws_url})", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.server_close()
