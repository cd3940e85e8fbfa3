"""The embedded AWS endpoint checks presigned POSTs as S3 does: a file outside the policy's
``content-length-range``, an unreadable policy or a malformed form is S3's 400 and nothing is
stored; moto alone stores whatever arrives and answers a malformed form with a 500."""

from __future__ import annotations

import base64
import json
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


def form_fields(bucket: str, key: str) -> tuple[str, dict[str, str]]:
    form = boto3.client("s3").generate_presigned_post(
        bucket, key, Conditions=[["content-length-range", 1, 10]], ExpiresIn=60
    )
    return form["url"], dict(form["fields"])


def b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("!!!not-base64", "Invalid JSON"),
        (b64([1, 2]), "Invalid JSON"),
        (b64({"conditions": [["content-length-range", "a", None]]}), "content-length-range"),
    ],
)
def test_an_unreadable_policy_is_refused_and_nothing_stored(
    bucket: str, policy: str, message: str
) -> None:
    url, fields = form_fields(bucket, "bad-policy")
    sent = requests.post(
        url, data={**fields, "policy": policy}, files={"file": ("f", b"x")}, timeout=30
    )
    assert sent.status_code == 400, sent.text
    assert "<Code>InvalidPolicyDocument</Code>" in sent.text and message in sent.text
    assert stored(bucket, "bad-policy") is None


def test_a_malformed_form_is_s3_s_400_not_a_500(bucket: str) -> None:
    url, fields = form_fields(bucket, "malformed")
    multipart = "multipart/form-data; boundary=zz"
    cases = [
        (dict(data=fields, files={"other": ("f", b"x")}), "InvalidArgument"),
        (
            dict(data={k: v for k, v in fields.items() if k != "key"}, files={"file": ("f", b"x")}),
            "InvalidArgument",
        ),
        (
            dict(data=b"garbage", headers={"Content-Type": "multipart/form-data"}),
            "MalformedPOSTRequest",
        ),
        (dict(data=b"--zz\r\nbroken", headers={"Content-Type": multipart}), "MalformedPOSTRequest"),
    ]
    for kwargs, code in cases:
        sent = requests.post(url, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert sent.status_code == 400, (code, sent.text)
        assert f"<Code>{code}</Code>" in sent.text
    assert stored(bucket, "malformed") is None
