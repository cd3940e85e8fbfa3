"""``first proxy`` when the gateway's WebSocket API cannot be reached: an OpenAI-shaped 502 to
the SDK, not a dropped connection."""

from __future__ import annotations

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
