"""The embedded AWS endpoint keeps S3's promise for presigned POSTs: a file outside the policy's
``content-length-range`` is refused (``EntityTooLarge`` / ``EntityTooSmall``) and nothing is
stored; moto alone stores whatever arrives."""

from __future__ import annotations

import uuid

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from tests.integration.conftest import Moto


@pytest.fixture
def bucket(moto_server: Moto) -> str:
    name = f"post-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def post(bucket: str, key: str, data: bytes, low: int, high: int) -> requests.Response:
    form = boto3.client("s3").generate_presigned_post(
        bucket, key, Conditions=[["content-length-range", low, high]], ExpiresIn=60
    )
    return requests.post(
        form["url"], data=form["fields"], files={"file": ("f.bin", data)}, timeout=30
    )


def stored(bucket: str, key: str) -> bytes | None:
    try:
        return bytes(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchKey"
        return None


def test_a_file_within_the_range_is_stored(bucket: str) -> None:
    sent = post(bucket, "ok", b"x" * 10, 1, 10)
    assert sent.status_code in (200, 201, 204), sent.text
    assert stored(bucket, "ok") == b"x" * 10


@pytest.mark.parametrize(
    ("size", "code", "limit"),
    [(11, "EntityTooLarge", "<MaxSizeAllowed>10<"), (0, "EntityTooSmall", "<MinSizeAllowed>1<")],
)
def test_a_file_outside_the_range_is_refused_and_not_stored(
    bucket: str, size: int, code: str, limit: str
) -> None:
    sent = post(bucket, "refused", b"x" * size, 1, 10)
    assert sent.status_code == 400
    assert f"<Code>{code}</Code>" in sent.text and limit in sent.text
    assert f"<ProposedSize>{size}<" in sent.text
    assert stored(bucket, "refused") is None
