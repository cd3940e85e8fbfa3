"""The local API server, fed raw bytes: every bad request gets an OpenAI error, never a hang.

The real app behind a real ``ApiServer`` on a free port, with short timeouts injected so idle and
slow clients are cut off in a fraction of a second. None of these requests reach a view that
needs AWS.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app import app
from offline.api_server import MAX_HEADER_BYTES, MAX_URL_BYTES, ApiServer
from offline.stack import free_port

# The client's patience: far longer than any server-side timeout below, never reached when the
# server behaves.
CLIENT_TIMEOUT_S = 20.0


def start(**options: Any) -> ApiServer:
    server = ApiServer(app, "127.0.0.1", free_port(), **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    s = start(idle_timeout_s=0.3, body_timeout_s=0.3)
    yield s
    s.shutdown()
    s.server_close()


def connect(server: ApiServer) -> socket.socket:
    host, port = server.server_address[:2]
    sock = socket.create_connection((str(host), int(port)), timeout=CLIENT_TIMEOUT_S)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response, read until its Content-Length is complete."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def read_status_after(sock: socket.socket, raw: bytes) -> int:
    """The status of the response to ``raw``, or of a 503 the server sent before reading it."""
    try:
        sock.sendall(raw)
        return read_response(sock)[0]
    except ConnectionResetError:
        return 503


def exchange(server: ApiServer, raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    with connect(server) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
    assert headers["content-type"] == "application/json"
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, headers, error


def post(length: str, body: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + length.encode() + b"\r\n\r\n" + body
    )


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", "0x10", ""])
def test_a_content_length_that_is_not_a_number_is_a_400(server: ApiServer, length: str) -> None:
    status, headers, error = exchange(server, post(length))
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert headers["connection"] == "close"


def test_two_different_content_lengths_are_a_400(server: ApiServer) -> None:
    raw = post("2", b"{}").replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 3")
    assert exchange(server, raw)[0] == 400


def test_a_body_shorter_than_its_content_length_is_a_400_not_a_hang(server: ApiServer) -> None:
    # The client sends 10 of the 100 bytes it announced, then waits.
    status, _, error = exchange(server, post("100", b'{"model":1'))
    assert status == 400
    assert "10 of the 100 bytes" in error["message"]


def test_a_chunked_body_is_refused_with_411(server: ApiServer) -> None:
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    status, _, error = exchange(server, raw)
    assert status == 411 and error["code"] == "length_required"


def test_a_body_over_api_gateways_limit_is_a_413_before_it_is_read(server: ApiServer) -> None:
    status, _, error = exchange(server, post(str(11 * 1024 * 1024)))
    assert status == 413 and error["code"] == "request_too_large"


def test_a_huge_url_is_an_openai_414(server: ApiServer) -> None:
    raw = b"GET /v1/models?q=" + b"a" * MAX_URL_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, _, error = exchange(server, raw)
    assert status == 414 and error["code"] == "uri_too_long"


def test_a_request_line_past_the_readers_own_limit_is_an_openai_414(server: ApiServer) -> None:
    raw = b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert exchange(server, raw)[0] == 414


def test_huge_headers_are_an_openai_431(server: ApiServer) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    status, _, error = exchange(server, raw)
    assert status == 431 and error["code"] == "request_header_fields_too_large"


def test_too_many_headers_are_an_openai_431(server: ApiServer) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert exchange(server, raw)[0] == 431


def test_a_garbled_request_line_is_an_openai_400_with_a_status_line(server: ApiServer) -> None:
    assert exchange(server, b"NONSENSE\r\n\r\n")[0] == 400


def test_an_unknown_method_is_an_openai_501(server: ApiServer) -> None:
    assert exchange(server, b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 501


@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer sk-whatever\r\n"])
def test_an_unknown_route_is_an_openai_404(server: ApiServer, auth: bytes) -> None:
    raw = b"GET /v1/nope HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    status, _, error = exchange(server, raw)
    assert status == 404
    assert error["code"] == "unknown_url" and "/v1/nope" in error["message"]


def test_a_wrong_method_is_an_openai_405(server: ApiServer) -> None:
    status, headers, error = exchange(server, b"GET /v1/embeddings HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and error["code"] == "method_not_allowed"
    assert headers["allow"] == "POST"


def test_a_wrong_content_type_is_an_openai_415(server: ApiServer) -> None:
    raw = post("2", b"{}").replace(b"application/json", b"application/xml")
    status, _, error = exchange(server, raw)
    assert status == 415 and error["code"] == "unsupported_media_type"


def test_keep_alive_still_serves_the_next_request(server: ApiServer) -> None:
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 200 and json.loads(body) == {"status": "ok"}


def test_an_idle_connection_is_closed_by_the_server(server: ApiServer) -> None:
    with connect(server) as sock:
        # Nothing sent: the server's idle timeout, not the client's, ends the wait.
        assert sock.recv(1) == b""


def test_an_idle_keep_alive_connection_is_closed_after_its_last_response(
    server: ApiServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert sock.recv(1) == b""


def test_connections_past_the_bound_get_a_503_instead_of_a_thread() -> None:
    small = start(max_connections=1)
    try:
        with connect(small) as first:
            first.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(first)[0] == 200  # its handler thread now holds the slot
            with connect(small) as second:
                status, headers, body = read_response(second)
                assert status == 503 and headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "overloaded"
        # The slot is given back when the first connection's thread ends (just after the
        # client sees the close, so a connect in between may still find it taken).
        statuses = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while 200 not in statuses and time.monotonic() < deadline:
            with connect(small) as third:
                statuses.append(
                    read_status_after(third, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                )
            time.sleep(0.01)
        assert statuses[-1] == 200
    finally:
        small.shutdown()
        small.server_close()


def test_a_burst_of_connects_is_queued_while_the_server_is_busy() -> None:
    # Not serving yet: every connect must complete from the listen backlog alone (the default
    # of 5 would leave the rest waiting on SYN retransmits, and these connects timing out).
    idle = ApiServer(app, "127.0.0.1", free_port())
    try:
        sockets = [connect(idle) for _ in range(64)]
        for sock in sockets:
            sock.close()
    finally:
        idle.server_close()
