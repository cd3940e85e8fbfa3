"""The S3 bucket: large payloads and results (DynamoDB items stop at 400 KB).

A record field holds its JSON text inline when it fits (``{name: text}``), else a pointer to an
S3 object and its size (``{name_key: key, name_bytes: n}``): ``fields`` writes that choice,
``load`` reads it back. The size lets the poller hand a large payload to an HPC node by URL
without reading it first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError
from chalicelib.stores.objects import ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class BlobNotFoundError(StoreError):
    pass


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class BlobStore:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    def objects(self) -> ObjectStore:
        """The same bucket as objects: presigned URLs for those without AWS credentials."""
        return ObjectStore(self._s3, self.bucket)

    def put_text(self, key: str, text: str) -> int:
        data = text.encode()
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")
        return len(data)

    def put_json(self, key: str, value: Any) -> int:
        return self.put_text(key, dumps(value))

    def get_text(self, key: str) -> str:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise BlobNotFoundError(f"s3://{self.bucket}/{key} does not exist") from exc
            raise
        return str(obj["Body"].read().decode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_text(key))

    def fields(self, name: str, text: str, key: str, inline_limit_bytes: int) -> dict[str, Any]:
        """``{name: text}`` when it fits inline, else ``{name_key: key, name_bytes: n}`` after
        writing to S3."""
        if len(text) <= inline_limit_bytes and len(text.encode()) <= inline_limit_bytes:
            return {name: text}
        size_bytes = self.put_text(key, text)
        return {f"{name}_key": key, f"{name}_bytes": size_bytes}

    def load(self, record: Mapping[str, Any], name: str) -> Any:
        """The value ``fields`` stored on ``record`` (None when it has neither form)."""
        text = self.load_text(record, name)
        return None if text is None else json.loads(text)

    def load_text(self, record: Mapping[str, Any], name: str) -> str | None:
        if record.get(name) is not None:
            return str(record[name])
        if record.get(f"{name}_key"):
            return self.get_text(record[f"{name}_key"])
        return None
