"""``first proxy`` on its own: an unreachable WebSocket API is an OpenAI-shaped 502 to the SDK,
and a body it cannot read (bad ``Content-Length``, chunked, too large) an OpenAI-shaped 4xx, not
a dropped connection or a thread waiting for ever."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from first_cli.proxy import Proxy
from offline.stack import free_port
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
