"""Images at the gateway (moto, the real stores): an image for a text-only model is a 400 naming
its message part before anything is queued; a vision model's images become checked data URLs in
the body the engine gets, file ids only the caller's own with purpose "vision"."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError
from chalicelib.images import ImageBounds, ImageResolver
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from tests.integration.pollers import poller_services

ALICE = Principal(id="alice", username="alice", kind="user")
BOB = Principal(id="bob", username="bob", kind="user")
VISION = "first/tiny-vision"
TEXT = "first/tiny-chat"
REGISTRY = REPO_ROOT / "infra" / "deployments" / "local.json"


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def chat(model: str, *images: dict[str, Any]) -> ChatCompletionRequest:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "count the cells"}]
    parts += [{"type": "image_url", "image_url": image} for image in images]
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": parts}]}
    )


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def upload(services: Services, owner: Principal, data: bytes, file_id: str, purpose: str) -> str:
    key = f"files/{file_id}"
    services.objects.put_bytes(key, data, "image/png")
    services.file_store.create(
        {
            "owner": owner.id,
            "file_id": file_id,
            "filename": "cells.png",
            "purpose": purpose,
            "bytes": len(data),
            "status": "processed",
            "key": key,
        }
    )
    return file_id


@pytest.fixture
def services(own_stage: str) -> Services:
    return poller_services(own_stage, REGISTRY, image_max_per_request=2)


def test_an_image_for_a_text_model_is_a_400_naming_the_part_and_nothing_is_queued(
    services: Services,
) -> None:
    with pytest.raises(BadRequestError) as refused:
        services.gateway.run(ALICE, "chat_completions", chat(TEXT, {"url": data_url(png())}))
    assert refused.value.param == "messages[0].content[1]"
    assert refused.value.code == "vision_not_supported"
    assert services.interactive_queue.depth() == 0


def test_a_vision_models_images_become_checked_data_urls_in_the_engine_body(
    services: Services,
) -> None:
    image = png((12, 10))
    file_id = upload(services, ALICE, image, "file-0aa1", "vision")
    req = chat(VISION, {"url": data_url(image), "detail": "low"}, {"url": file_id})
    services.gateway.authorize(ALICE, req, "chat_completions")
    parts = req.engine_body()["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": data_url(image), "detail": "low"}}
    assert parts[2] == {"type": "image_url", "image_url": {"url": data_url(image)}}


@pytest.mark.parametrize(
    ("owner", "purpose"), [(BOB, "vision"), (ALICE, "batch")], ids=["others", "batch-file"]
)
def test_a_file_that_is_not_the_callers_vision_file_is_a_400(
    services: Services, owner: Principal, purpose: str
) -> None:
    file_id = upload(services, owner, png(), f"file-0bb{owner.id}{purpose}", purpose)
    with pytest.raises(BadRequestError, match="no file") as refused:
        services.gateway.authorize(ALICE, chat(VISION, {"url": file_id}), "chat_completions")
    assert refused.value.param == "messages[0].content[1].image_url"


def test_more_images_than_the_bound_is_a_400_naming_the_first_one_over(
    services: Services,
) -> None:
    url = {"url": data_url(png())}
    with pytest.raises(BadRequestError) as refused:
        services.gateway.authorize(ALICE, chat(VISION, url, url, url), "chat_completions")
    assert (refused.value.param, refused.value.code) == (
        "messages[0].content[3]",
        "too_many_images",
    )


def test_an_allowed_https_url_is_fetched_by_the_api_and_others_never(services: Services) -> None:
    fetched: list[str] = []

    def fetch(url: str, max_bytes: int) -> bytes:
        fetched.append(url)
        return png()

    bounds = ImageBounds(2, 1 << 20, 1 << 20, ("PNG",), ("https://data.example.org/open/",))
    resolver = ImageResolver(bounds, services.file_store, services.objects, fetch=fetch)
    url = resolver.data_url(ALICE, "https://data.example.org/open/cell.png", "p")
    assert url == data_url(png()) and fetched == ["https://data.example.org/open/cell.png"]
    with pytest.raises(BadRequestError):
        resolver.data_url(ALICE, "https://data.example.org/closed/cell.png", "p")
    assert fetched == ["https://data.example.org/open/cell.png"]


def test_a_vision_upload_that_is_not_an_image_is_refused_at_upload(services: Services) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nvision\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\nnot a png\r\n--{boundary}--\r\n"
    ).encode()
    with pytest.raises(BadRequestError) as refused:
        services.batch_api.upload(ALICE, f"multipart/form-data; boundary={boundary}", body)
    assert (refused.value.param, refused.value.code) == ("file", "invalid_image")
    ok = body.replace(b"not a png", png())
    assert (
        services.batch_api.upload(ALICE, f"multipart/form-data; boundary={boundary}", ok)["purpose"]
        == "vision"
    )
