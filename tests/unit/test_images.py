"""Image references in chat (chalicelib/images.py): parsed, bounded and checked from the header,
and every refusal a 400 naming the message part; the node's decoder refuses the same files."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from chalicelib.errors import BadRequestError
from chalicelib.images import (
    ImageBounds,
    check_image_bytes,
    data_url_of,
    parse_image_ref,
    url_allowed,
)
from chalicelib.protocol import ChatCompletionRequest
from hpc_functions.engines.base import EngineError
from hpc_functions.engines.transformers_vision import decode_image

BOUNDS = ImageBounds(
    max_per_request=2,
    max_bytes=64 * 1024,
    max_pixels=256 * 256,
    formats=("PNG", "JPEG"),
    url_allow=("https://images.example.org/public/",),
)
PARAM = "messages[0].content[1].image_url"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format=fmt)
    return out.getvalue()


def noise_jpeg() -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (128, 128), random.Random(0).randbytes(128 * 128 * 3)).save(out, "JPEG")
    return out.getvalue()


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR saying ``width`` x ``height`` (CRC fixed): a decompression bomb's
    header, a few dozen bytes long."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def refused(data: bytes) -> BadRequestError:
    with pytest.raises(BadRequestError) as exc:
        check_image_bytes(data, BOUNDS, PARAM)
    assert exc.value.param == PARAM
    return exc.value


def test_a_png_and_a_jpeg_are_read_from_their_header() -> None:
    png = check_image_bytes(image_bytes("PNG"), BOUNDS, PARAM)
    jpeg = check_image_bytes(image_bytes("JPEG", (40, 30)), BOUNDS, PARAM)
    assert (png.format, png.width, png.height) == ("PNG", 16, 12)
    assert (jpeg.format, jpeg.width, jpeg.height) == ("JPEG", 40, 30)
    assert data_url_of(image_bytes(), png).startswith("data:image/png;base64,iVBOR")


def test_a_decompression_bomb_header_is_refused_without_decoding() -> None:
    bomb = with_png_size(image_bytes(), 100_000, 100_000)  # 10^10 pixels, 70 bytes
    assert refused(bomb).code == "image_too_large"
    # Over our bound but under Pillow's own: our bound answers.
    over = refused(with_png_size(image_bytes(), 1000, 1000))
    assert "1000x1000 pixels" in over.message and over.code == "image_too_large"


def test_a_truncated_png_is_refused_by_its_chunk_checks() -> None:
    png = image_bytes("PNG", (64, 64))
    assert refused(png[: len(png) // 2]).code == "invalid_image"


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", image_bytes("GIF"), image_bytes("BMP"), b"%PDF-1.4\n"],
    ids=["text", "gif-not-allowed", "bmp", "pdf"],
)
def test_a_file_of_another_type_is_refused(data: bytes) -> None:
    assert refused(data).code == "invalid_image"


def test_an_image_over_the_byte_bound_is_refused_before_it_is_read() -> None:
    assert refused(b"\x89PNG" + b"\0" * BOUNDS.max_bytes).code == "image_too_large"
    huge = "data:image/png;base64," + "A" * (BOUNDS.max_bytes * 2)
    with pytest.raises(BadRequestError, match="over 65536 bytes"):
        parse_image_ref(huge, BOUNDS, PARAM)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png,rawbytes", "base64"),
        ("data:text/plain;base64,aGk=", "text/plain"),
        ("data:image/png;base64,%%%notbase64", "not valid base64"),
        ("http://images.example.org/public/a.png", "none of them"),
        ("https://images.example.org/private/a.png", "none of them"),
        ("file:///etc/passwd", "none of them"),
        ("s3://someone-elses-bucket/files/file-abc", "gateway's bucket"),
        ("s3://first-data/requests/req_1/payload.json", "gateway's bucket"),
        ("", "non-empty"),
    ],
)
def test_references_that_are_not_allowed_are_400s_naming_the_part(url: str, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as exc:
        parse_image_ref(url, BOUNDS, PARAM, bucket="first-data")
    assert exc.value.param == PARAM


def test_data_urls_file_ids_s3_files_and_allowed_https_urls_are_read() -> None:
    png = image_bytes()
    assert parse_image_ref(data_url(png), BOUNDS, PARAM).data == png
    assert parse_image_ref("file-0123abcd", BOUNDS, PARAM).file_id == "file-0123abcd"
    s3 = parse_image_ref("s3://first-data/files/file-0123abcd", BOUNDS, PARAM, bucket="first-data")
    assert (s3.kind, s3.file_id) == ("file", "file-0123abcd")
    https = parse_image_ref("https://images.example.org/public/cells/1.png", BOUNDS, PARAM)
    assert (https.kind, https.url) == ("https", "https://images.example.org/public/cells/1.png")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://images.example.org/public/a.png", True),
        ("https://images.example.org/public/", True),
        ("https://images.example.org/publicity/a.png", False),
        ("https://images.example.org.evil.com/public/a.png", False),
        ("https://user@images.example.org/public/a.png", False),
        ("https://images.example.org:8443/public/a.png", False),
        ("http://images.example.org/public/a.png", False),
        ("https://images.example.org/public/a.png#x", False),
    ],
)
def test_the_allow_list_matches_host_port_and_whole_path_segments(url: str, allowed: bool) -> None:
    assert url_allowed(url, BOUNDS.url_allow) is allowed


def test_a_chat_request_names_each_image_part_and_asks_for_vision() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "look"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "file-abc"}},
                    ],
                },
            ],
        }
    )
    assert [param for param, _ in req.image_parts()] == ["messages[1].content[1]"]
    assert req.capabilities_used() == {"vision": "messages[1].content[1]"}


def test_the_node_decodes_a_good_image_and_refuses_what_only_decoding_finds() -> None:
    kwargs: dict[str, Any] = {"max_pixels": BOUNDS.max_pixels, "formats": BOUNDS.formats}
    image = decode_image(data_url(image_bytes("JPEG", (40, 30)), "image/jpeg"), "p", **kwargs)
    assert (image.mode, image.size) == ("RGB", (40, 30))

    jpeg = noise_jpeg()
    # A JPEG cut in its scan data passes the header check; only decoding finds it.
    check_image_bytes(jpeg[: len(jpeg) // 2], BOUNDS, PARAM)
    with pytest.raises(EngineError) as bad:
        decode_image(data_url(jpeg[: len(jpeg) // 2], "image/jpeg"), "p", **kwargs)
    assert (bad.value.param, bad.value.code, bad.value.status_code) == ("p", "invalid_image", 400)

    bomb = with_png_size(image_bytes(), 100_000, 100_000)
    with pytest.raises(EngineError) as big:
        decode_image(data_url(bomb), "p", **kwargs)
    assert big.value.code == "image_too_large"
    with pytest.raises(EngineError, match="data:image"):
        decode_image("https://images.example.org/public/a.png", "p", **kwargs)
