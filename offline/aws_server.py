"""The embedded local AWS endpoint: moto server, plus a counter of the API calls it serves.

Runs on 127.0.0.1:4566 (LocalStack's port) so ``AWS_ENDPOINT_URL`` is the same either way.
``GET /_first/calls`` returns ``{"total": n, "by_operation": {"sqs.SendMessage": n, ...},
"bytes_in": n, "bytes_out": n}`` and
``DELETE /_first/calls`` resets it: the benchmark's count of AWS calls per request.
``GET /_first/memory[?by=lineno|traceback|filename]`` reports the server's RSS, the objects
moto's registry holds, the most common live object types and, when started with
``--tracemalloc FRAMES``, the allocations that hold the most memory (``offline/moto_memory.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from offline.moto_memory import memory_report, stop_instance_tracking
from offline.moto_transactions import stop_table_copies
from offline.s3_events import add_sequencers
from offline.s3_post_policy import PostPolicyLimits

COUNTER_PATH = "/_first/calls"
MEMORY_PATH = "/_first/memory"


def _operation(environ: dict[str, Any]) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:  # JSON protocols: DynamoDB_20120810.PutItem, AmazonSQS.SendMessage
        prefix, _, op = target.rpartition(".")
        service = "dynamodb" if prefix.lower().startswith("dynamodb") else prefix.lower()
        service = "sqs" if "sqs" in service else service
        return f"{service}.{op}"
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = auth.split("/")[3] if auth.count("/") >= 4 else "unknown"
    if service in ("sqs", "cloudformation", "sts"):
        action = parse_qs(environ.get("QUERY_STRING", "")).get("Action", [""])[0]
        return f"{service}.{action or environ['REQUEST_METHOD']}"
    return f"{service}.{environ['REQUEST_METHOD']}"


class CountingApp:
    """Counts calls per operation and the bytes each way (request bodies, response bodies)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._calls: Counter[str] = Counter()
        self._bytes_in = 0
        self._bytes_out = 0
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == COUNTER_PATH:
            return self._report(environ, start_response)
        if environ.get("PATH_INFO") == MEMORY_PATH:
            return _memory_report(environ, start_response)
        op = _operation(environ)
        with self._lock:
            self._calls[op] += 1
            self._bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
        chunks = list(self._app(environ, start_response))
        with self._lock:
            self._bytes_out += sum(len(c) for c in chunks)
        return chunks

    def _report(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            if environ["REQUEST_METHOD"] == "DELETE":
                self._calls.clear()
                self._bytes_in = self._bytes_out = 0
            body = json.dumps(
                {
                    "total": sum(self._calls.values()),
                    "by_operation": dict(self._calls),
                    "bytes_in": self._bytes_in,
                    "bytes_out": self._bytes_out,
                }
            ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


def _memory_report(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    by = parse_qs(environ.get("QUERY_STRING", "")).get("by", ["lineno"])[0]
    if by not in ("lineno", "traceback", "filename"):
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"by: lineno, traceback or filename"]
    body = json.dumps(memory_report(by), indent=1).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class AtomicDynamoDB:
    """Serves DynamoDB calls one at a time, as DynamoDB's own guarantees require.

    moto server handles each request on its own thread with no lock, so two conditional
    updates of one item can both read the old value and both pass: DynamoDB makes each write
    atomic. Without this, exactly-once claims and rate limits would not really be tested.
    Other services keep their concurrency (SQS long polls hold a thread for seconds).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB"):
            return self._app(environ, start_response)
        with self._lock:
            return list(self._app(environ, start_response))


class _Dispatcher(DomainDispatcherApplication):
    """moto's dispatcher, remembering which backend serves each host.

    moto resolves the backend on every request by listing its package directory under a
    global lock; the answer for a host never changes, so this looks it up once.
    """

    def __init__(self, create_app: Callable[..., Any]) -> None:
        super().__init__(create_app)
        self._backends: dict[str | None, Any] = {}

    def get_backend_for_host(self, host: str | None) -> Any:
        if host not in self._backends:
            self._backends[host] = super().get_backend_for_host(host)
        return self._backends[host]


class _Handler(MotoRequestHandler):
    # Keep-alive clients (boto3) otherwise wait ~40 ms on Nagle + delayed ACK per call.
    disable_nagle_algorithm = True


def build_server(host: str, port: int) -> BaseWSGIServer:
    """The counting moto server, bound and ready for ``serve_forever``."""
    # A log line per AWS call costs the server's one busy core; the counter keeps the totals.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Else moto keeps every object it ever made, transactions' table copies included.
    stop_instance_tracking()
    # Else each transaction deep-copies every table it touches: a request costs O(table size).
    stop_table_copies()
    # moto's queue events lack the sequencer that orders the writes of one key (the drop folder).
    add_sequencers()
    # moto stores a form upload whatever its policy's content-length-range says; S3 refuses it.
    app = CountingApp(AtomicDynamoDB(PostPolicyLimits(_Dispatcher(create_backend_app))))
    return make_server(host, port, app, threaded=True, request_handler=_Handler)


def serve(host: str, port: int, *, tracemalloc_frames: int = 0) -> None:
    if tracemalloc_frames:
        tracemalloc.start(tracemalloc_frames)
    build_server(host, port).serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FIRST embedded AWS endpoint (moto)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help=f"trace allocations (FRAMES deep; slow) for GET {MEMORY_PATH}",
    )
    args = parser.parse_args(argv)
    serve(args.host, args.port, tracemalloc_frames=args.tracemalloc)


if __name__ == "__main__":
    main()
