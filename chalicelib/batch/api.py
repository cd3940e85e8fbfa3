"""The Files and Batches routes' work: everything is the caller's own.

Records are keyed by (owner, id), so another user's file or batch is not found, exactly like an
id that never existed (404), at the same cost. File bytes live in the data bucket under
``files/<file_id>``; bodies larger than the API's payload limit are uploaded straight to S3 with
a presigned POST (``create_upload``), and contents larger than ``file_content_inline_bytes`` are
served by a redirect to a presigned GET.
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.auth import Principal
from chalicelib.batch.multipart import field_text, parse_form
from chalicelib.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from chalicelib.images import VISION_PURPOSE, ImageBounds, check_image_bytes
from chalicelib.logs import get_logger
from chalicelib.metrics import MetricsRecorder, handled_errors
from chalicelib.protocol.batches import (
    COMPLETION_WINDOW_S,
    CreateBatchRequest,
    batch_object,
    file_object,
    list_object,
)
from chalicelib.protocol.bounds import MAX_FILENAME_BYTES
from chalicelib.protocol.common import load_json, parse_body
from chalicelib.settings import Settings
from chalicelib.stores.batches import BatchConflictError, BatchStore
from chalicelib.stores.files import FileConflictError, FileStore, sortable_id
from chalicelib.stores.objects import ObjectStore
from chalicelib.stores.queue import RequestQueue

# "vision": images for chat messages (chalicelib/images.py), checked when uploaded here;
# "user_data": inputs of jobs (POST /v1/jobs "files", chalicelib/jobs.py), as OpenAI names them.
PURPOSES = ("batch", VISION_PURPOSE, "user_data")
MAX_LIST = 10_000


@dataclass(frozen=True)
class Content:
    """A file's content: the bytes, or where to fetch them (a presigned URL)."""

    data: bytes | None
    redirect_url: str | None


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def check_filename(filename: Any) -> str:
    """A file's name as given (a name, never a path: the bytes live under ``files/<id>``), or a
    400 naming ``filename``: at most ``MAX_FILENAME_BYTES`` of UTF-8, no control characters."""
    if not isinstance(filename, str) or not filename:
        raise BadRequestError("filename must be a non-empty string.", param="filename")
    try:
        size = len(filename.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequestError("filename must be valid Unicode.", param="filename") from None
    if size > MAX_FILENAME_BYTES:
        raise BadRequestError(
            f"filename is {size} bytes of UTF-8; at most {MAX_FILENAME_BYTES} are allowed.",
            param="filename",
        )
    if any(unicodedata.category(c) == "Cc" for c in filename):
        raise BadRequestError("filename must not contain control characters.", param="filename")
    return filename


def _limit(query: dict[str, str], default: int, maximum: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError("limit must be an integer.", param="limit") from None
    if not 1 <= value <= maximum:
        raise BadRequestError(f"limit must be between 1 and {maximum}.", param="limit")
    return value


class BatchApi:
    def __init__(
        self,
        *,
        settings: Settings,
        files: FileStore,
        batches: BatchStore,
        objects: ObjectStore,
        queue: RequestQueue,
        logger: Logger | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        self._s = settings
        self._files = files
        self._batches = batches
        self._objects = objects
        self._queue = queue
        self._log = logger or get_logger("first-api")
        self._recorder = recorder
        # Failures handled here (logged, cleaned up): also written to ``recorder`` when given.
        self.counts: Counter[str] = Counter()

    # ----- files ---------------------------------------------------------------------------

    def upload(self, principal: Principal, content_type: str, body: bytes) -> dict[str, Any]:
        parts = parse_form(content_type, body)
        purpose = self._purpose(field_text(parts, "purpose"))
        self._check_file_count(principal)
        part = parts.get("file")
        if part is None or not part.data:
            raise BadRequestError("The form has no (or an empty) 'file' part.", param="file")
        filename = check_filename(part.filename or "upload.jsonl")
        if purpose == VISION_PURPOSE:
            check_image_bytes(part.data, ImageBounds.from_settings(self._s), "file")
        file_id = sortable_id("file-")
        key = file_key(file_id)
        self._objects.put_bytes(key, part.data)
        try:
            record = self._files.create(
                {
                    "owner": principal.id,
                    "file_id": file_id,
                    "filename": filename,
                    "purpose": purpose,
                    "bytes": len(part.data),
                    "status": "processed",
                    "key": key,
                }
            )
        except Exception:
            # No object without its record: outside every listing and the per-user count.
            self._discard(key)
            raise
        return file_object(record)

    def _discard(self, key: str) -> None:
        """Delete the bytes of a file whose record could not be written (logged, counted)."""
        self._count("file_record_failed")
        self._log.exception("file record not written; deleting its object", extra={"key": key})
        try:
            self._objects.delete(key)
        except Exception:  # noqa: BLE001 - the record's error is the one the caller gets
            self._count("file_object_orphaned")
            self._log.exception("file object left without a record", extra={"key": key})

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        if self._recorder is not None:
            handled_errors(self._recorder, {kind: 1})

    def create_upload(self, principal: Principal, raw: bytes) -> dict[str, Any]:
        """A file record waiting for its bytes, and a presigned POST to send them to S3."""
        data = load_json(raw) if raw else None
        if not isinstance(data, dict):
            raise BadRequestError('Send {"filename", "purpose": "batch"} as JSON.')
        purpose = self._purpose(data.get("purpose"))
        filename = check_filename(data.get("filename"))
        self._check_file_count(principal)
        file_id = sortable_id("file-")
        key = file_key(file_id)
        ttl_s = min(self._s.presigned_url_ttl_s, 3600)
        upload = self._objects.presign_post(key, self._s.batch_max_file_bytes, ttl_s)
        record = self._files.create(
            {
                "owner": principal.id,
                "file_id": file_id,
                "filename": filename,
                "purpose": purpose,
                "bytes": 0,
                "status": "uploaded",
                "status_details": "waiting for the upload to S3",
                "key": key,
            }
        )
        return {
            **file_object(record),
            "upload": {**upload, "method": "POST", "expires_at": int(time.time()) + ttl_s},
        }

    def _check_file_count(self, principal: Principal) -> None:
        """At most ``files_max_per_user`` files each (uploads and batch results alike); checked
        before each upload, so uploads racing at the limit may pass it by their number."""
        limit = self._s.files_max_per_user
        if limit and self._files.count(principal.id, limit) >= limit:
            raise BadRequestError(
                f"You have reached the limit of {limit} files. Delete files you no longer need "
                "(DELETE /v1/files/{file_id}) and try again.",
                param="file",
                code="files_limit_exceeded",
            )

    def _purpose(self, purpose: Any) -> str:
        if purpose not in PURPOSES:
            raise BadRequestError(
                f"purpose must be one of {list(PURPOSES)}, not {purpose!r}.", param="purpose"
            )
        return str(purpose)

    def list_files(self, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequestError("order must be 'asc' or 'desc'.", param="order")
        items, more = self._files.list(
            principal.id,
            limit=_limit(query, MAX_LIST, MAX_LIST),
            after=query.get("after"),
            purpose=query.get("purpose"),
            newest_first=order == "desc",
        )
        return list_object([file_object(i) for i in items], more)

    def _file(self, principal: Principal, file_id: str) -> dict[str, Any]:
        record = self._files.get(principal.id, file_id)
        if record is None:
            raise NotFoundError(f"No such File object: {file_id}", param="id")
        if record.get("status") == "uploaded":
            record = self._settle_upload(record)
        return record

    def _settle_upload(self, record: dict[str, Any]) -> dict[str, Any]:
        """A presigned upload that has arrived becomes ``processed`` (with its size)."""
        size = self._objects.size(record["key"])
        if size is None:
            return record
        fields: dict[str, Any] = {"bytes": size, "status": "processed", "status_details": None}
        if size > self._s.batch_max_file_bytes:
            fields.update(
                status="error",
                status_details=f"The file is larger than {self._s.batch_max_file_bytes} bytes.",
            )
        try:
            self._files.update(record["owner"], record["file_id"], fields, status="uploaded")
        except FileConflictError:
            return self._files.get(record["owner"], record["file_id"]) or record
        return {**record, **fields}

    def get_file(self, principal: Principal, file_id: str) -> dict[str, Any]:
        return file_object(self._file(principal, file_id))

    def file_content(self, principal: Principal, file_id: str) -> Content:
        record = self._file(principal, file_id)
        if record.get("status") != "processed":
            raise BadRequestError(f"File {file_id} has no content yet.", param="id")
        if int(record.get("bytes") or 0) > self._s.file_content_inline_bytes:
            return Content(None, self._objects.presign_get(record["key"], 3600))
        return Content(self._objects.get_bytes(record["key"]), None)

    def delete_file(self, principal: Principal, file_id: str) -> dict[str, Any]:
        old = self._files.delete(principal.id, file_id)
        if old is None:
            raise NotFoundError(f"No such File object: {file_id}", param="id")
        self._objects.delete(old["key"])
        return {"id": file_id, "object": "file", "deleted": True}

    # ----- batches -------------------------------------------------------------------------

    def create_batch(self, principal: Principal, raw: bytes) -> dict[str, Any]:
        req = parse_body(raw, CreateBatchRequest)
        if req.metadata is not None and (
            len(req.metadata) > 16
            or any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items())
        ):
            raise BadRequestError(
                "metadata holds at most 16 pairs, keys of 64 and values of 512 characters.",
                param="metadata",
            )
        source = self._file(principal, req.input_file_id)
        if source.get("purpose") != "batch":
            raise BadRequestError(
                f"File {req.input_file_id} was not uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        if source.get("status") != "processed":
            raise BadRequestError(
                f"File {req.input_file_id} is {source.get('status')}, not processed.",
                param="input_file_id",
            )
        if int(source.get("bytes") or 0) > self._s.batch_max_file_bytes:
            raise PayloadTooLargeError(
                f"The input file is larger than {self._s.batch_max_file_bytes} bytes.",
                param="input_file_id",
            )
        now = int(time.time())
        record = self._batches.create(
            {
                "owner": principal.id,
                "batch_id": sortable_id("batch_"),
                "endpoint": req.endpoint,
                "input_file_id": req.input_file_id,
                "input_bucket": self._objects.bucket,
                "input_key": source["key"],
                "completion_window": req.completion_window,
                "metadata": req.metadata,
                "created_at": now,
                "expires_at": now + COMPLETION_WINDOW_S,
                "principal": principal.to_item(),
            }
        )
        self._queue.send({"owner": principal.id, "batch_id": record["batch_id"]})
        return batch_object(record)

    def _batch(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        record = self._batches.get(principal.id, batch_id)
        if record is None:
            raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")
        return record

    def get_batch(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        return batch_object(self._batch(principal, batch_id))

    def list_batches(self, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
        items, more = self._batches.list(
            principal.id, limit=_limit(query, 20, 100), after=query.get("after")
        )
        return list_object([batch_object(i) for i in items], more)

    def cancel_batch(self, principal: Principal, batch_id: str) -> dict[str, Any]:
        """validating|in_progress → cancelling; the worker stops new shards and finalizes what
        is done. Cancelling a batch that is cancelling or cancelled already answers it as is."""
        self._batch(principal, batch_id)
        try:
            record = self._batches.transition(
                principal.id, batch_id, "cancelling", ("validating", "in_progress")
            )
        except BatchConflictError as exc:
            current = exc.current
            if current is not None and current["status"] in ("cancelling", "cancelled"):
                return batch_object(current)
            state = current["status"] if current else "gone"
            raise BadRequestError(
                f"Batch {batch_id} cannot be cancelled: it is {state}.", param="batch_id"
            ) from None
        return batch_object(record)
