"""Images in chat through the real OpenAI SDK and the whole offline stack (issue 23): the tiny
vision-language model answers an image sent as a data URL and as a file id; a text model
refuses it; hostile files are 400s, and the endpoint's workers live on to answer the next one."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from typing import Any

import openai
import pytest
from openai import OpenAI
from PIL import Image
from websockets.exceptions import ConnectionClosed

from offline.background import BackgroundStack
from tests.e2e.conftest import TINY
from tests.e2e.test_streaming import frames_until_done, text_of, ws_connect

VISION = "first/tiny-vision"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (48, 40)) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", size, (0, 0, 0))
    for x in range(0, size[0], 6):  # a few bright "cells"
        image.putpixel((x, x % size[1]), (255, 255, 255))
    image.save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(client: OpenAI, model: str, url: str) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "How many cells are there?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        max_tokens=8,
    )


def test_the_vision_model_answers_an_image_sent_as_a_data_url(client: OpenAI) -> None:
    answer = ask(client, VISION, data_url(image_bytes()))
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].finish_reason in ("stop", "length")
    # The prompt holds the image's tokens (16 for the tiny LLaVA), not only the text.
    assert answer.usage is not None and answer.usage.prompt_tokens > 16


def test_the_vision_model_answers_an_image_uploaded_as_a_vision_file(client: OpenAI) -> None:
    uploaded = client.files.create(file=("cells.jpg", image_bytes("JPEG")), purpose="vision")
    assert uploaded.purpose == "vision"
    answer = ask(client, VISION, uploaded.id)
    assert answer.choices[0].message.content is not None


def test_an_image_for_a_text_model_is_a_400_naming_the_part(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, TINY, data_url(image_bytes()))
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("messages[0].content[1]", "vision_not_supported")


def noise(fmt: str, side: int = 96) -> bytes:
    """An image that compresses badly: cut in half, the cut is in its pixel data."""
    out = io.BytesIO()
    pixels = random.Random(0).randbytes(side * side * 3)
    Image.frombytes("RGB", (side, side), pixels).save(out, fmt)
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    png = image_bytes()
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


HOSTILE = {
    "truncated-png": (data_url(noise("PNG")[:10_000]), "invalid_image"),
    # Passes the API's header check: the node's decoder refuses it.
    "truncated-jpeg": (data_url(noise("JPEG")[:4000], "image/jpeg"), "invalid_image"),
    "huge-dimensions": (data_url(_png_claiming(200_000, 200_000)), "image_too_large"),
    "wrong-type": (data_url(b"%PDF-1.4 not an image", "image/png"), "invalid_image"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_images_are_400s_and_the_model_still_answers(client: OpenAI, name: str) -> None:
    url, code = HOSTILE[name]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, VISION, url)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == code
    assert str(error["param"]).startswith("messages[0].content[1]")
    # No worker died on it: the next image is answered.
    assert ask(client, VISION, data_url(image_bytes())).choices[0].message.content is not None


def test_over_the_websocket_a_large_image_goes_as_a_file_id(
    stack: BackgroundStack, client: OpenAI
) -> None:
    large = noise("PNG", 256)  # ~197 KB: as a data URL, over the 128 KB message limit

    def message(url: str) -> str:
        content = [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        body = {
            "model": VISION,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": content}],
        }
        return json.dumps({"action": "chat.completions", "id": "v", "body": body})

    with ws_connect(stack) as ws:
        ws.send(message(data_url(large)))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    uploaded = client.files.create(file=("large.png", large), purpose="vision")
    with ws_connect(stack) as ws:
        ws.send(message(uploaded.id))
        frames = frames_until_done(ws, "v")
    assert frames[-1]["type"] == "done", frames[-1]
    assert frames[-1]["usage"]["prompt_tokens"] > 16 and text_of(frames)
