"""S3 objects read and written whole or streamed: files, batch shards, outputs, the drop folder.

``BlobStore`` keeps small JSON payloads; this adapter moves bytes without holding them (line
iterators, file uploads) and signs URLs for those who hold no AWS credentials (HPC nodes, and
clients uploading or downloading files larger than API Gateway's payload limit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chalicelib.stores import StoreError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectNotFoundError(StoreError):
    pass


class ObjectChangedError(StoreError):
    """The object is no longer the one asked for (its ETag differs: it was written again)."""


def _missing(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in ("NoSuchKey", "NoSuchVersion", "404", "NotFound")


class ObjectStore:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    def in_bucket(self, bucket: str) -> ObjectStore:
        """The same client on another bucket (a batch's input may be in the drop bucket)."""
        return self if bucket == self.bucket else ObjectStore(self._s3, bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/jsonl") -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def upload_file(self, path: Path, key: str, content_type: str = "application/jsonl") -> None:
        """Upload a local file (multipart above 8 MB, by boto3's transfer manager)."""
        self._s3.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})

    def get_bytes(self, key: str) -> bytes:
        return bytes(self._get(key)["Body"].read())

    def lines(
        self, key: str, version_id: str | None = None, etag: str | None = None
    ) -> Iterator[bytes]:
        """The object's lines, streamed (each without its newline); never the whole body. With
        ``etag``, only the object with that ETag (else ``ObjectChangedError``): in a bucket
        without versions, a key written again is another object under the same name."""
        body = self._get(key, version_id, etag)["Body"]
        try:
            yield from body.iter_lines(chunk_size=64 * 1024, keepends=False)
        finally:
            body.close()

    def _get(self, key: str, version_id: str | None = None, etag: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if etag:
            kwargs["IfMatch"] = f'"{etag.strip(chr(34))}"'
        try:
            return self._s3.get_object(**kwargs)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectNotFoundError(f"s3://{self.bucket}/{key} does not exist") from exc
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                raise ObjectChangedError(f"s3://{self.bucket}/{key} is not {etag}") from exc
            raise

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""
        try:
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def presign_get(self, key: str, ttl_s: int) -> str:
        return str(
            self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_s
            )
        )

    def presign_put(self, key: str, ttl_s: int) -> str:
        return str(
            self._s3.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_s
            )
        )

    def presign_post(self, key: str, max_bytes: int, ttl_s: int) -> dict[str, Any]:
        """A browser-style upload form (``url`` + ``fields``); S3 itself refuses a body over
        ``max_bytes`` (the ``content-length-range`` condition)."""
        out = self._s3.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Conditions=[["content-length-range", 1, max_bytes]],
            ExpiresIn=ttl_s,
        )
        return {"url": str(out["url"]), "fields": dict(out["fields"])}

    def download_to(self, key: str, out: Any) -> int:
        """Copy the object into the binary file ``out`` in chunks; the bytes copied (0 when
        the object does not exist)."""
        try:
            body = self._get(key)["Body"]
        except ObjectNotFoundError:
            return 0
        copied = 0
        try:
            for chunk in body.iter_chunks(chunk_size=1024 * 1024):
                out.write(chunk)
                copied += len(chunk)
        finally:
            body.close()
        return copied
