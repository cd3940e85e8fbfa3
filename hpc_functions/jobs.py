"""Running an HPC function as a job (``POST /v1/jobs``): its context, progress and cancel.

The poller's task for a job is the same as for an engine's request::

    {"request_id", "engine": {"kind": "function", "function": name, "max_output_bytes": n},
     "body": {"input": {...}, "files": [{"id", "filename", "bytes", "url"}],
              "job": {"progress_url", "cancel_url", ...}}}

(``body_from`` in place of ``body`` when large; ``hpc_functions.offload``). ``run_job`` calls the
function with a ``JobContext``: its ``input``, its files (``file_bytes``, fetched by presigned
GET), ``progress(...)`` (a JSON document PUT by the job's presigned URL, which the gateway shows
as the job's ``progress``), and ``check()``, which raises ``JobCancelled`` once the job is
cancelled (the gateway writes a mark the job's presigned GET then finds; checked at most every
``CANCEL_CHECK_S``). The function returns a JSON-able dict, the job's result; a result over the
function's ``max_output_bytes`` fails the job, and one over the task's threshold leaves by S3.

Self-contained like every HPC function: standard library and ``requests`` only, imported inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# A cancel costs a job at most this long (plus its current step) before it stops.
CANCEL_CHECK_S = 0.5
# Progress is PUT at most this often (the last report of a burst is the one kept).
PROGRESS_EVERY_S = 0.25
TRANSFER_TIMEOUT_S = 120.0


class JobCancelled(Exception):  # noqa: N818 - raised to stop, not an error of the function
    """The job was cancelled: the function stops where it checked."""


class JobInputError(ValueError):
    """The input passed the schema but the function cannot use it (a 400 for the job)."""


class JobContext:
    def __init__(self, task: dict[str, Any]) -> None:
        body = task.get("body") or {}
        self.request_id = str(task.get("request_id") or "")
        self.input: dict[str, Any] = dict(body.get("input") or {})
        self.files: list[dict[str, Any]] = list(body.get("files") or [])
        job = body.get("job") or {}
        self._progress_url = job.get("progress_url")
        self._cancel_url = job.get("cancel_url")
        self._checked_at = float("-inf")
        self._reported_at = float("-inf")
        self._cancelled = False
        self.progress_errors = 0

    def file_bytes(self, index: int = 0) -> bytes:
        """The bytes of the job's file ``index`` (``files`` in ``POST /v1/jobs``)."""
        import requests

        if not 0 <= index < len(self.files):
            raise JobInputError(f"the job has no file {index} (it has {len(self.files)})")
        got = requests.get(self.files[index]["url"], timeout=TRANSFER_TIMEOUT_S)
        got.raise_for_status()
        return bytes(got.content)

    def progress(
        self, fraction: float | None = None, *, force: bool = False, **fields: Any
    ) -> None:
        """Report progress (``fraction`` of the work done, 0 to 1, and any JSON-able fields):
        the job's ``progress`` shows the last report. Never fails the job."""
        now = time.monotonic()
        if not self._progress_url or (not force and now - self._reported_at < PROGRESS_EVERY_S):
            return
        import json

        import requests

        self._reported_at = now
        report = {"fraction": fraction, **fields, "at": round(time.time(), 3)}
        try:
            put = requests.put(
                self._progress_url, data=json.dumps(report).encode(), timeout=TRANSFER_TIMEOUT_S
            )
            put.raise_for_status()
        except requests.RequestException as exc:
            # Progress is advice: the job goes on; the count says how much was lost.
            self.progress_errors += 1
            import sys

            print(f"job progress not stored: {type(exc).__name__}", file=sys.stderr, flush=True)

    def cancelled(self) -> bool:
        """Whether the job was cancelled (asked at most every ``CANCEL_CHECK_S``)."""
        if self._cancelled or not self._cancel_url:
            return self._cancelled
        now = time.monotonic()
        if now - self._checked_at < CANCEL_CHECK_S:
            return False
        self._checked_at = now
        import requests

        try:
            got = requests.get(self._cancel_url, timeout=10.0)
        except requests.RequestException:
            return False  # unreachable now: asked again at the next check
        self._cancelled = got.status_code == 200
        return self._cancelled

    def check(self) -> None:
        """Raise ``JobCancelled`` if the job was cancelled: call it between steps."""
        if self.cancelled():
            raise JobCancelled(self.request_id)


def _error(message: str, code: str, status_code: int, kind: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": kind, "param": None, "code": code},
        "status_code": status_code,
    }


def run_job(
    function: Callable[[JobContext], dict[str, Any]], task: dict[str, Any]
) -> dict[str, Any]:
    """Run ``function`` for the job ``task``; the result as the gateway expects it."""
    import json

    from hpc_functions.offload import fetch_body, store_result

    task = fetch_body(task)
    context = JobContext(task)
    started = time.perf_counter()
    try:
        output = function(context)
    except JobCancelled:
        return _error("The job was cancelled.", "cancelled", 499, "invalid_request_error")
    except JobInputError as exc:
        return _error(f"Invalid job input: {exc}", "invalid_input", 400, "invalid_request_error")
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    size = len(json.dumps(output, separators=(",", ":")).encode())
    limit = int((task.get("engine") or {}).get("max_output_bytes") or 0)
    if limit and size > limit:
        return _error(
            f"The function's result is {size} bytes; at most {limit} are allowed.",
            "output_too_large",
            500,
            "server_error",
        )
    context.progress(1.0, force=True)
    return store_result(task, {"response": output, "engine_time_ms": elapsed_ms})
