"""The HTTP layer under the local API, alone: the same trivial Chalice app behind its
``LocalGateway``, served by ``offline.api_server.ApiServer`` (http.server, a thread per
connection), by uvicorn + starlette (the gateway on the thread pool) and by werkzeug's threaded
server. Issue 18 asked whether the local API should move to one of the last two.

    python -m bench.server_layers [--requests 1000] [--rounds 2]

Each server runs in a process of its own; rows: p50 of sequential keep-alive POSTs, the
server's CPU per call, requests/s with 32 clients. The uvicorn and werkzeug rows have none of
ApiServer's guards (limits, timeouts, OpenAI errors): their best case. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx

from bench.common import cpu_s, percentile
from chalicelib.settings import REPO_ROOT
from offline.stack import free_port

VARIANTS = ("api_server", "uvicorn", "werkzeug")


def serve(variant: str, port: int) -> None:
    from chalice.app import Chalice
    from chalice.config import Config
    from chalice.local import LocalGateway

    app = Chalice(app_name="bench")

    @app.route("/health", methods=["GET", "POST"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "data": list(range(20))}

    if variant == "api_server":
        from offline.api_server import ApiServer

        ApiServer(app, "127.0.0.1", port).serve_forever()
    gateway = LocalGateway(app, Config.create(chalice_app=app, app_name="bench"))

    def call(method: str, path: str, headers: dict[str, str], body: bytes | None) -> Any:
        r = gateway.handle_request(method=method, path=path, headers=headers, body=body)
        payload = r.get("body") or b""
        payload = base64.b64decode(payload) if r.get("isBase64Encoded") else payload
        headers = {k: v for k, v in r["headers"].items() if k.lower() != "content-length"}
        return r["statusCode"], headers, payload

    if variant == "uvicorn":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def handle(request: Request) -> Response:
            body = await request.body()
            status, headers, payload = await run_in_threadpool(
                call, request.method, request.url.path, dict(request.headers), body or None
            )
            return Response(payload, status, headers=headers)

        routes = [Route("/{path:path}", handle, methods=["GET", "POST"])]
        uvicorn.run(
            Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", ws="none"
        )
    if variant == "werkzeug":
        from werkzeug.serving import WSGIRequestHandler, make_server
        from werkzeug.wrappers import Request as WsgiRequest
        from werkzeug.wrappers import Response as WsgiResponse

        class Handler(WSGIRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        @WsgiRequest.application  # type: ignore[arg-type]
        def wsgi(request: WsgiRequest) -> WsgiResponse:
            status, headers, payload = call(
                request.method, request.path, dict(request.headers), request.get_data() or None
            )
            return WsgiResponse(payload, status, headers=headers)

        make_server("127.0.0.1", port, wsgi, threaded=True, request_handler=Handler).serve_forever()


def measure(variant: str, n: int) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.server_layers", "--serve", variant, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/health"
        client = httpx.Client()
        for _ in range(50):
            client.get(url)
        before, times = cpu_s(proc.pid), []
        for _ in range(n):
            start = time.perf_counter()
            client.post(
                url, content=b'{"model": "m"}', headers={"content-type": "application/json"}
            )
            times.append((time.perf_counter() - start) * 1000)
        cpu_ms = (cpu_s(proc.pid) - before) * 1000 / n
        clients = [httpx.Client() for _ in range(32)]
        start = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda c: [c.get(url) for _ in range(60)], clients))
        rps = 32 * 60 / (time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "server": variant,
        "p50_ms": round(percentile(times, 50), 2),
        "cpu_ms_per_call": round(cpu_ms, 2),
        "requests_per_s_at_32": round(rps),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return
    print("| server | p50 ms | server CPU ms/call | req/s at 32 clients |")
    print("|---|---|---|---|")
    for _ in range(args.rounds):
        for variant in VARIANTS:
            r = measure(variant, args.requests)
            print(
                f"| {r['server']} | {r['p50_ms']} | {r['cpu_ms_per_call']} "
                f"| {r['requests_per_s_at_32']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
