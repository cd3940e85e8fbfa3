"""Files per user (``Settings.files_max_per_user``): the Files API refuses an upload past it with
an OpenAI-shaped 400 naming ``file``, both ways in (multipart and the presigned upload), until a
file is deleted; other users are not counted."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError, PayloadTooLargeError
from chalicelib.services import Services
from chalicelib.settings import Settings

LIMIT = 2


def upload(services: Services, user: Principal) -> str:
    req = requests.Request(
        "POST",
        "http://x/v1/files",
        files={"file": ("in.jsonl", b"{}\n")},
        data={"purpose": "batch"},
    ).prepare()
    body = req.body if isinstance(req.body, bytes) else b""
    return str(services.batch_api.upload(user, req.headers["Content-Type"], body)["id"])


def presigned(services: Services, user: Principal) -> str:
    raw = json.dumps({"filename": "big.jsonl", "purpose": "batch"}).encode()
    return str(services.batch_api.create_upload(user, raw)["id"])


def test_uploads_past_the_files_per_user_limit_are_refused_until_one_is_deleted(
    stage: str,
) -> None:
    services = Services(Settings(stage=stage, files_max_per_user=LIMIT))
    name = f"filer-{uuid.uuid4().hex[:6]}"
    user = Principal(id=name, username=name)
    first = upload(services, user)
    presigned(services, user)
    for attempt in (upload, presigned):
        with pytest.raises(BadRequestError) as refused:
            attempt(services, user)
        body = refused.value.to_body()["error"]
        assert body["param"] == "file" and body["code"] == "files_limit_exceeded"
        assert f"limit of {LIMIT} files" in body["message"]
    other = Principal(id=f"{name}-other", username=f"{name}-other")
    assert upload(services, other)
    services.batch_api.delete_file(user, first)
    assert upload(services, user)


def test_a_batch_over_the_input_file_size_limit_is_a_413_naming_the_file(stage: str) -> None:
    services = Services(Settings(stage=stage, batch_max_file_bytes=2))
    name = f"big-{uuid.uuid4().hex[:6]}"
    user = Principal(id=name, username=name)
    file_id = upload(services, user)  # 3 bytes: one more than the limit
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    with pytest.raises(PayloadTooLargeError) as refused:
        services.batch_api.create_batch(user, json.dumps(body).encode())
    error = refused.value.to_body()["error"]
    assert refused.value.STATUS_CODE == 413 and error["param"] == "input_file_id"
    assert error["code"] == "request_too_large"
