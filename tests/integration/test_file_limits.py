"""Files per user (``Settings.files_max_per_user``): the Files API refuses an upload past it with
an OpenAI-shaped 400 naming ``file``, both ways in (multipart and the presigned upload), until a
file is deleted; other users are not counted."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError, PayloadTooLargeError
from chalicelib.protocol.bounds import MAX_FILENAME_BYTES
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


def named_upload(services: Services, user: Principal, filename: str) -> dict[str, Any]:
    req = requests.Request(
        "POST",
        "http://x/v1/files",
        files={"file": (filename, b"{}\n")},
        data={"purpose": "batch"},
    ).prepare()
    body = req.body if isinstance(req.body, bytes) else b""
    return services.batch_api.upload(user, req.headers["Content-Type"], body)


def named_presigned(services: Services, user: Principal, filename: str) -> dict[str, Any]:
    raw = json.dumps({"filename": filename, "purpose": "batch"}).encode()
    return services.batch_api.create_upload(user, raw)


def stored_files(services: Services) -> set[str]:
    """Every file object in the stage's data bucket (only uploads write under files/)."""
    pages = services.s3.get_paginator("list_objects_v2").paginate(
        Bucket=services.settings.bucket_name, Prefix="files/"
    )
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.mark.parametrize(
    "filename",
    [
        "a" * (MAX_FILENAME_BYTES + 1),
        "x" * 10_000,
        "x" * 300_000,  # the attack: echoed in every file object and list page
        "x" * 450_000,  # past DynamoDB's 400 KB item: the record write failed with a 500
        "é" * 128,  # 128 characters, 256 bytes of UTF-8
        "bad\x00name.jsonl",
        "\x1b[31mred.jsonl",  # a terminal escape, echoed to whoever lists files
    ],
    ids=["256", "10k", "300k", "450k", "unicode-256-bytes", "nul", "escape"],
)
@pytest.mark.parametrize("way", [named_upload, named_presigned], ids=["multipart", "presigned"])
def test_a_file_name_past_the_bound_is_a_400_naming_filename_and_stores_nothing(
    stage: str, way: Any, filename: str
) -> None:
    services = Services(Settings(stage=stage))
    name = f"namer-{uuid.uuid4().hex[:6]}"
    user = Principal(id=name, username=name)
    before = stored_files(services)
    with pytest.raises(BadRequestError) as refused:
        way(services, user, filename)
    error = refused.value.to_body()["error"]
    assert refused.value.STATUS_CODE == 400 and error["param"] == "filename"
    assert error["type"] == "invalid_request_error" and len(error["message"]) < 300
    assert stored_files(services) == before
    assert services.batch_api.list_files(user, {})["data"] == []


@pytest.mark.parametrize(
    "filename",
    [
        "a" * MAX_FILENAME_BYTES,
        "é" * (MAX_FILENAME_BYTES // 2),  # 254 bytes
        "日本語のファイル.jsonl",
        "../../etc/passwd",  # a name, never a path: the object's key is files/<id>
        "runs/2024/in.jsonl",
        "with spaces and 'quotes'.jsonl",
    ],
    ids=["255", "unicode-254-bytes", "cjk", "dotdot", "slashes", "quotes"],
)
@pytest.mark.parametrize("way", [named_upload, named_presigned], ids=["multipart", "presigned"])
def test_a_file_name_within_the_bound_is_kept_as_given_and_is_never_a_path(
    stage: str, way: Any, filename: str
) -> None:
    services = Services(Settings(stage=stage))
    name = f"namer-{uuid.uuid4().hex[:6]}"
    user = Principal(id=name, username=name)
    before = stored_files(services)
    made = way(services, user, filename)
    assert made["filename"] == filename
    assert stored_files(services) - before <= {f"files/{made['id']}"}
    assert services.batch_api.get_file(user, made["id"])["filename"] == filename


def test_a_record_that_cannot_be_written_leaves_no_object_behind(own_stage: str) -> None:
    # A files table that does not exist: the record write fails after the bytes were stored.
    services = Services(
        Settings(stage=own_stage, files_table=f"first-{own_stage}-gone", files_max_per_user=0)
    )
    user = Principal(id="orphan", username="orphan")
    with pytest.raises(ClientError):
        named_upload(services, user, "in.jsonl")
    assert stored_files(services) == set()
    assert services.batch_api.counts["file_record_failed"] == 1
