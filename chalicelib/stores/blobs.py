"""The S3 bucket: large payloads and results (DynamoDB items stop at 400 KB)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.errors import FirstError


class BlobNotFoundError(FirstError):
    pass


class BlobStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    def put_json(self, key: str, value: Any) -> int:
        data = json.dumps(value, separators=(",", ":")).encode()
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")
        return len(data)

    def get_json(self, key: str) -> Any:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise BlobNotFoundError(f"s3://{self.bucket}/{key} does not exist") from exc
            raise
        return json.loads(obj["Body"].read())
