"""The local API: the real Chalice app behind a small HTTP server of ours.

``chalice local`` serves one request per ~44 ms to keep-alive clients (Nagle's algorithm) and has
no WebSocket support, so this server wraps Chalice's ``LocalGateway`` (HTTP request → API Gateway
event → the app → HTTP response) with Nagle off and one thread per connection. WebSocket routes
(API Gateway's $connect/$default/$disconnect and the @connections API) mount beside it on the
same ``ApiServer`` when they come: ``handle`` is the only HTTP entry point.

API Gateway itself refuses bodies over 10 MB before the Lambda runs; so does this server.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException

API_GATEWAY_MAX_BODY = 10 * 1024 * 1024


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: Chalice, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.gateway = LocalGateway(app, Config.create(chalice_app=app, app_name=app.app_name))
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the app logs
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > API_GATEWAY_MAX_BODY:
            self.close_connection = True
            error = {
                "message": f"Request body exceeds {API_GATEWAY_MAX_BODY} bytes.",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            }
            self._send(413, {"Content-Type": "application/json"}, json.dumps({"error": error}))
            return
        body = self.rfile.read(length) if length else None
        try:
            response = self.server.gateway.handle_request(
                method=self.command, path=self.path, headers=dict(self.headers), body=body
            )
        except LocalGatewayException as exc:
            self._send(exc.CODE, dict(exc.headers), exc.body or b"")
            return
        headers = dict(response["headers"])
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(values)
        payload = response.get("body") or b""
        if response.get("isBase64Encoded"):
            import base64

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
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FIRST local API server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    from app import app

    server = ApiServer(app, args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
