"""The Files and Batches API's S3 paths on the moto server: a presigned upload sent straight to
S3 (a real form POST) that settles to ``processed`` and feeds a batch; an upload over the
configured size that S3 refuses, and that settles to ``error`` naming the limit when its bytes
arrive another way; a content above the inline limit answered by a presigned GET; and
``GET /v1/batches`` paging with ``after``.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest
import requests

from chalicelib.auth import Principal
from chalicelib.batch.worker import BatchWorker
from chalicelib.errors import BadRequestError
from chalicelib.services import Services
from chalicelib.settings import Settings
from tests.integration.test_batch import (  # noqa: F401 - fixtures
    InProcessEndpoint,
    batch_services,
    endpoint,
    final,
    lines,
    registry_path,
    upload,
    worker,
)


def someone(prefix: str) -> Principal:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return Principal(id=name, username=name)


def presigned_upload(services: Services, user: Principal, data: bytes) -> dict[str, Any]:
    """``POST /v1/files/uploads``, then the client's form POST to S3 as the answer says."""
    raw = json.dumps({"filename": "big.jsonl", "purpose": "batch"}).encode()
    created = services.batch_api.create_upload(user, raw)
    assert created["status"] == "uploaded" and created["upload"]["method"] == "POST"
    form = created["upload"]
    sent = requests.post(
        form["url"], data=form["fields"], files={"file": ("big.jsonl", data)}, timeout=30
    )
    assert sent.status_code in (200, 201, 204), sent.text
    return dict(created)


def length_range(form: dict[str, Any]) -> list[Any]:
    policy = json.loads(base64.b64decode(form["fields"]["policy"]))
    (condition,) = [
        c for c in policy["conditions"] if isinstance(c, list) and c[0] == "content-length-range"
    ]
    return list(condition)


def test_a_presigned_upload_settles_to_processed_and_feeds_a_batch(
    batch_services: Services,  # noqa: F811 - the fixtures imported above
    worker: BatchWorker,  # noqa: F811
) -> None:
    s = batch_services
    user = someone("uploader")
    data = lines(4)
    created = presigned_upload(s, user, data)
    # S3 itself refuses a body over the configured limit: the form's policy says so.
    assert length_range(created["upload"]) == [
        "content-length-range",
        1,
        s.settings.batch_max_file_bytes,
    ]
    settled = s.batch_api.get_file(user, created["id"])
    assert (settled["status"], settled["bytes"]) == ("processed", len(data))
    assert s.batch_api.file_content(user, created["id"]).data == data
    body = {
        "input_file_id": created["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = s.batch_api.create_batch(user, json.dumps(body).encode())
    done = final(s, user, batch["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 4, "completed": 4, "failed": 0}


def test_an_upload_over_the_configured_size_is_refused_by_s3_and_by_the_settle_step(
    stage: str,
) -> None:
    limit = 100
    s = Services(Settings(stage=stage, batch_max_file_bytes=limit))
    user = someone("too-big")
    data = lines(3)
    assert len(data) > limit
    raw = json.dumps({"filename": "big.jsonl", "purpose": "batch"}).encode()
    created = s.batch_api.create_upload(user, raw)
    form = created["upload"]
    assert length_range(form)[2] == limit
    # S3 (and the embedded endpoint, as S3 does) refuses the form: nothing arrives.
    sent = requests.post(
        form["url"], data=form["fields"], files={"file": ("big.jsonl", data)}, timeout=30
    )
    assert sent.status_code == 400 and "<Code>EntityTooLarge</Code>" in sent.text
    assert s.batch_api.get_file(user, created["id"])["status"] == "uploaded"
    # Bytes that reach the key another way are refused when the upload settles.
    bucket = urlparse(form["url"]).path.strip("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=form["fields"]["key"], Body=data)
    settled = s.batch_api.get_file(user, created["id"])
    assert settled["status"] == "error"
    assert settled["status_details"] == f"The file is larger than {limit} bytes."
    body = {
        "input_file_id": created["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    with pytest.raises(BadRequestError) as refused:
        s.batch_api.create_batch(user, json.dumps(body).encode())
    assert refused.value.to_body()["error"]["param"] == "input_file_id"


def test_content_above_the_inline_limit_is_a_presigned_get_of_the_same_bytes(
    stage: str,
) -> None:
    s = Services(Settings(stage=stage, file_content_inline_bytes=64))
    user = someone("reader")
    small, big = b'{"a":1}\n', lines(2)
    assert len(small) <= 64 < len(big)
    inline = s.batch_api.file_content(user, upload(s, user, small))
    assert (inline.data, inline.redirect_url) == (small, None)
    redirected = s.batch_api.file_content(user, upload(s, user, big))
    assert redirected.data is None and redirected.redirect_url is not None
    # What the 307's Location serves: the file's bytes, with no credentials but the URL's.
    got = requests.get(redirected.redirect_url, timeout=30)
    assert got.status_code == 200 and got.content == big


def test_batches_page_with_after_newest_first(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    user = someone("pager")
    file_id = upload(s, user, lines(1))
    body = json.dumps(
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    ).encode()
    ids = [s.batch_api.create_batch(user, body)["id"] for _ in range(5)]
    try:
        newest_first = list(reversed(ids))
        seen: list[str] = []
        after: str | None = None
        pages = []
        while True:
            query = {"limit": "2", **({"after": after} if after else {})}
            page = s.batch_api.list_batches(user, query)
            pages.append(page)
            seen += [b["id"] for b in page["data"]]
            assert page["first_id"] == page["data"][0]["id"]
            assert page["last_id"] == page["data"][-1]["id"]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == newest_first
        assert [len(p["data"]) for p in pages] == [2, 2, 1]
        assert [p["has_more"] for p in pages] == [True, True, False]
        # Another user's listing does not see them, even from one of their ids.
        other = s.batch_api.list_batches(someone("other"), {"after": ids[-1]})
        assert other["data"] == [] and other["has_more"] is False
    finally:
        for batch_id in ids:  # a later test's worker finalizes them with nothing run
            s.batch_api.cancel_batch(user, batch_id)
