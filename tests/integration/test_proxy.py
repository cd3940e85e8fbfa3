"""``first proxy`` on its own: an unreachable WebSocket API is an OpenAI-shaped 502 to the SDK,
and a body it cannot read (bad ``Content-Length``, chunked, too large) an OpenAI-shaped 4xx, not
a dropped connection or a thread waiting for ever; a silent caller is hung up on, and one that
leaves before its answer is counted."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from openai import OpenAI

from first_cli.proxy import Proxy
from offline.stack import free_port
from tests.integration.test_poller import wait_until
from tests.servers import serving


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    nobody = f"ws://127.0.0.1:{free_port()}"  # a port nothing listens on
    with serving(Proxy("http://127.0.0.1:9/v1", nobody, "key", "127.0.0.1", free_port())) as p:
        yield p


def test_an_unreachable_websocket_api_is_a_502(proxy: Proxy) -> None:
    sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key="key", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert caught.value.status_code == 502
    assert caught.value.type == "server_error"
    assert "could not be reached" in caught.value.message


def raw_request(proxy: Proxy, head: bytes) -> bytes:
    host, port = proxy.server_address[:2]
    with socket.create_connection((str(host), port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):  # the proxy hangs up after answering
            answer += chunk
        return answer


@pytest.mark.parametrize(
    ("length", "status"),
    [
        ("abc", b"400"),
        ("-1", b"400"),  # read(-1) would wait for the caller to hang up
        ("3, 4", b"400"),
        (str(11 * 1024 * 1024), b"413"),
    ],
)
def test_a_content_length_it_cannot_read_is_an_openai_error_not_a_dropped_connection(
    proxy: Proxy, length: str, status: bytes
) -> None:
    answer = raw_request(
        proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status, answer
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_chunked_body_is_a_411(proxy: Proxy) -> None:
    answer = raw_request(
        proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
    )
    assert answer.split(b" ")[1] == b"411", answer


def test_a_caller_silent_for_the_idle_timeout_is_hung_up_on() -> None:
    # Before its first request (uvicorn alone waits for ever there) and in the middle of a body.
    nobody = f"ws://127.0.0.1:{free_port()}"
    proxy = Proxy(
        "http://127.0.0.1:9/v1", nobody, "key", "127.0.0.1", free_port(), idle_timeout_s=0.5
    )
    with serving(proxy):
        host, port = proxy.server_address
        for sent in (
            b"",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",
        ):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(sent)
                assert sock.recv(65536) == b""  # closed by the proxy, long before 10 s
        # The caller whose body stopped: its request was waiting for it, and is ended.
        wait_until(lambda: proxy.counts["gone_before_answer"] == 1, "the count")


class _HeldGateway(ThreadingHTTPServer):
    """A gateway that answers each request only once ``release`` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", free_port()), _HeldHandler)


class _HeldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HeldGateway

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.arrived.set()
        self.server.release.wait(timeout=30)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_a_caller_gone_before_its_answer_is_counted() -> None:
    nobody = f"ws://127.0.0.1:{free_port()}"
    with serving(_HeldGateway()) as gateway:
        url = f"http://127.0.0.1:{gateway.server_address[1]}/v1"
        with serving(Proxy(url, nobody, "key", "127.0.0.1", free_port())) as proxy:
            with socket.create_connection(proxy.server_address, timeout=10) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
                assert gateway.arrived.wait(timeout=30)
            gateway.release.set()
            wait_until(lambda: proxy.counts["gone_before_answer"] == 1, "the count")
            # The proxy serves on.
            sdk = OpenAI(base_url=f"{proxy.url}/v1", api_key="key", max_retries=0)
            assert sdk.with_raw_response.models.list().status_code == 200
