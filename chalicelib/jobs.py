"""HPC functions as jobs: ``GET /v1/functions``, ``POST /v1/jobs`` and the job routes.

A job is a request of another kind on the one submit path: admitted against the caller's limits
and queued by ``Gateway.admit``/``Gateway.submit`` (its ``model`` the function's name, its
``function`` the Globus Compute function the registry names), so the poller claims, routes
(federation, circuits, slot leases) and runs it as it runs an engine's request, and a poller
killed mid-job hands it on as it hands on any request. The API does not wait: the record is
written before the id is answered (``Gateway.detach``) and marked as the caller's job
(``RequestStore.mark_job``), which lists it.

::

    record status   queued  dispatched  completed  failed  cancelled
    job status      queued  running     succeeded  failed  cancelled

The HPC function gets its input, its files by presigned GET, and two URLs of the job's own
(``hpc_functions/jobs.py``): a presigned PUT for the progress it reports (read back into the
job's ``progress``) and a presigned GET of a cancel mark, which exists once the job is
cancelled (the function stops at its next check). Its result is the record's result: inline
when small, else in S3 and answered as a presigned ``result_url``.

Another user's job, a request that is not a job, and a missing id answer alike: 404.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from chalicelib.access import may_use
from chalicelib.auth import Principal
from chalicelib.batch.api import _limit
from chalicelib.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from chalicelib.gateway import Gateway
from chalicelib.logs import get_logger
from chalicelib.protocol.batches import list_object
from chalicelib.protocol.common import parse_body
from chalicelib.protocol.jobs import CreateJobRequest, JobBody
from chalicelib.registry import HpcFunction, Registry
from chalicelib.settings import Settings
from chalicelib.stores.blobs import BlobStore
from chalicelib.stores.files import FileStore
from chalicelib.stores.limits import LimitStore
from chalicelib.stores.objects import ObjectNotFoundError
from chalicelib.stores.requests import (
    TERMINAL,
    RequestConflictError,
    RequestRecord,
    RequestStore,
)

STATUS = {
    "queued": "queued",
    "dispatched": "running",
    "completed": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
MAX_LIST = 100
CANCELLED = {
    "error": {
        "message": "The job was cancelled.",
        "type": "invalid_request_error",
        "param": None,
        "code": "cancelled",
    },
    "status_code": 499,
}


def function_object(spec: HpcFunction) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "function",
        "description": spec.description,
        "input_schema": spec.input_schema,
        "max_input_bytes": spec.max_input_bytes,
        "max_output_bytes": spec.max_output_bytes,
        "max_files": spec.max_files,
    }


def input_error(spec: HpcFunction, value: dict[str, Any]) -> BadRequestError | None:
    """The 400 for ``value`` against the function's JSON Schema (naming the field), or None."""
    validator = jsonschema.Draft202012Validator(spec.input_schema)
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    param = "input" + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
    )
    return BadRequestError(f"Invalid job input ('{param}'): {error.message[:300]}", param=param)


def job_view(record: RequestRecord) -> dict[str, Any]:
    """The job object of a record, without what needs S3 (progress, a stored result)."""
    created = record.get("created_at")
    started, finished = record.get("dispatched_at"), record.get("finished_at")
    view: dict[str, Any] = {
        "id": record["request_id"],
        "object": "job",
        "function": record.get("model"),
        "status": STATUS.get(str(record.get("status")), "failed"),
        "created_at": int(float(created)) if created is not None else None,
        "started_at": int(float(started)) if started is not None else None,
        "finished_at": int(float(finished)) if finished is not None else None,
        "progress": None,
        "result": None,
        "result_url": None,
        "error": None,
    }
    if record.get("engine_time_ms") is not None:
        view["usage"] = {"compute_time_ms": float(record["engine_time_ms"])}
    if view["status"] in ("failed", "cancelled") and isinstance(record.get("error"), dict):
        view["error"] = record["error"]
    return view


class Jobs:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        gateway: Gateway,
        requests: RequestStore,
        blobs: BlobStore,
        files: FileStore,
        limit_store: LimitStore | None = None,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._gateway = gateway
        self._requests = requests
        self._blobs = blobs
        self._objects = blobs.objects()
        self._files = files
        self._limit_store = limit_store
        self._log = get_logger("first-api")
        # Failures handled here (logged, the job answered all the same).
        self.counts: Counter[str] = Counter()

    def list_functions(self, principal: Principal) -> dict[str, Any]:
        """The functions the caller may call; the others are not listed."""
        data = [
            function_object(f) for f in self._registry.functions if may_use(principal, f.access)
        ]
        return {"object": "list", "data": data}

    def _spec(self, principal: Principal, name: str) -> HpcFunction:
        spec = self._registry.function(name)
        if spec is None or not may_use(principal, spec.access):
            raise NotFoundError(
                f"The function '{name}' does not exist or you do not have access to it.",
                param="function",
                code="function_not_found",
            )
        return spec

    def submit(self, principal: Principal, raw: bytes | None) -> dict[str, Any]:
        req = parse_body(raw, CreateJobRequest)
        spec = self._spec(principal, req.function)
        size = len(json.dumps(req.input, separators=(",", ":")).encode())
        if size > spec.max_input_bytes:
            raise PayloadTooLargeError(
                f"The job's input is {size} bytes; '{spec.name}' takes at most"
                f" {spec.max_input_bytes} (send large data as files).",
                param="input",
            )
        error = input_error(spec, req.input)
        if error is not None:
            raise error
        if len(req.files) > spec.max_files:
            raise BadRequestError(
                f"'{spec.name}' takes at most {spec.max_files} files.", param="files"
            )
        ttl_s = self._s.presigned_url_ttl_s
        files = [self._file(principal, file_id, i, ttl_s) for i, file_id in enumerate(req.files)]
        prefix = f"jobs/{uuid.uuid4().hex}"
        job = {
            "progress_key": f"{prefix}/progress.json",
            "progress_url": self._objects.presign_put(f"{prefix}/progress.json", ttl_s),
            "cancel_key": f"{prefix}/cancel",
            "cancel_url": self._objects.presign_get(f"{prefix}/cancel", ttl_s),
        }
        body = JobBody(model=spec.name, input=req.input, files=files, job=job)
        admission = self._gateway.admit(principal, body)
        request_id = self._gateway.submit(principal, spec.function, body, admission.hold)
        self._gateway.detach(request_id)
        self._requests.mark_job(request_id, principal.id)
        # Nothing to read from S3 yet (no progress, no result): the record alone.
        return job_view(self._record(principal, request_id))

    def _file(self, principal: Principal, file_id: str, i: int, ttl_s: int) -> dict[str, Any]:
        record = self._files.get(principal.id, file_id)
        if record is None or record.get("status") != "processed":
            raise NotFoundError(f"No such File object: {file_id}", param=f"files[{i}]")
        return {
            "id": file_id,
            "filename": record.get("filename"),
            "bytes": int(record.get("bytes") or 0),
            "url": self._objects.presign_get(str(record["key"]), ttl_s),
        }

    def _record(self, principal: Principal, job_id: str) -> RequestRecord:
        # get_owned answers a foreign id as it answers a missing one (and as fast).
        record = self._requests.get_owned(job_id, principal.id)
        if record is None or record.get("job_owner") != principal.id:
            raise NotFoundError(f"No job found with id '{job_id}'.", param="job_id")
        return record

    def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        record = self._record(principal, job_id)
        view = job_view(record)
        view["progress"] = self._progress(record)
        if record["status"] == "completed":
            if record.get("result_key"):
                ttl_s = self._s.presigned_url_ttl_s
                view["result_url"] = self._objects.presign_get(str(record["result_key"]), ttl_s)
            else:
                view["result"] = self._blobs.load(record, "result")
        return view

    def _job_fields(self, record: RequestRecord) -> dict[str, Any]:
        payload = self._blobs.load(record, "payload")
        job = payload.get("job") if isinstance(payload, dict) else None
        return job if isinstance(job, dict) else {}

    def _progress(self, record: RequestRecord) -> Any:
        key = self._job_fields(record).get("progress_key")
        if not key:
            return None
        try:
            return json.loads(self._objects.get_bytes(str(key)))
        except ObjectNotFoundError:
            return None  # nothing reported (yet)
        except ValueError:
            self.counts["progress_unreadable"] += 1
            self._log.warning("unreadable job progress", extra={"job_id": record["request_id"]})
            return None

    def list(self, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
        limit = _limit(query, 20, MAX_LIST)
        after: RequestRecord | None = None
        if query.get("after"):
            after = self._record(principal, query["after"])
        items, more = self._requests.list_jobs(principal.id, limit=limit, after=after)
        return list_object([job_view(i) for i in items], more)

    def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a finished one is answered as it is)."""
        record = self._record(principal, job_id)
        if record["status"] in TERMINAL:
            return self.get(principal, job_id)
        try:
            self._requests.cancel(job_id, CANCELLED)
        except RequestConflictError:
            return self.get(principal, job_id)  # it finished meanwhile
        # A poller that claims it now finds it cancelled; a running function sees the mark.
        key = self._job_fields(record).get("cancel_key")
        if key:
            try:
                self._objects.put_bytes(str(key), b"cancelled", "text/plain")
            except Exception:  # noqa: BLE001 - cancelled all the same; the function runs on
                self.counts["cancel_mark_errors"] += 1
                self._log.exception("cancel mark not written", extra={"job_id": job_id})
        if record.get("limits") and self._limit_store is not None:
            # This write made it terminal, so the poller's own finish will not release it.
            try:
                self._limit_store.release(record["limits"], 0)
            except Exception:  # noqa: BLE001 - the job is cancelled; a lost release expires
                self.counts["limit_release_errors"] += 1
                self._log.exception("rate-limit release failed", extra={"job_id": job_id})
        return self.get(principal, job_id)
