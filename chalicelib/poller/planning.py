"""Pure decisions of the poller (no I/O): unit-tested on plain values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from chalicelib.compute.errors import (
    ComputeError,
    RemoteTaskError,
    ResultTooLargeError,
    TaskTooLargeError,
)
from chalicelib.errors import EngineFailedError, PayloadTooLargeError

if TYPE_CHECKING:
    from chalicelib.stores.requests import RequestRecord


class PoisonMessageError(Exception):
    """A message that cannot be processed; it is retried, then left for the DLQ."""


def warm_of(message: dict[str, Any]) -> tuple[str, str] | None:
    """``(model, endpoint)`` of a warm-up message (``{"warm": {...}}``), else None."""
    try:
        warm = json.loads(message["Body"]).get("warm")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(warm, dict):
        return None
    model, endpoint = warm.get("model"), warm.get("endpoint")
    if not isinstance(model, str) or not isinstance(endpoint, str):
        raise PoisonMessageError('a warm message is {"warm": {"model", "endpoint"}}')
    return model, endpoint


@dataclass(frozen=True)
class Hints:
    """What routing a request needs before it is claimed, so the poller chooses the endpoint
    first and notes it in the claim's own write."""

    owner: str
    model: str
    function: str
    # The conversation's affinity key (chalicelib/affinity.py), where the API gave one.
    affinity: str | None = None


def record_of(message: dict[str, Any]) -> RequestRecord | None:
    """The queued record the message carries (the API's, for the claim to write), or None: a
    message of only ``request_id`` names a record already written."""
    try:
        record = json.loads(message["Body"]).get("record")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return (
        cast("RequestRecord", record)
        if isinstance(record, dict) and "created_at" in record
        else None
    )


def hints_from(record: Mapping[str, Any]) -> Hints:
    return Hints(
        str(record.get("owner") or ""),
        str(record.get("model")),
        str(record.get("function")),
        str(record["affinity"]) if record.get("affinity") else None,
    )


def request_id_of(message: dict[str, Any]) -> str:
    try:
        body = json.loads(message["Body"])
        request_id = body["request_id"]
    except (KeyError, TypeError, ValueError) as exc:
        raise PoisonMessageError('message body is not {"request_id": ...}') from exc
    if not isinstance(request_id, str) or not request_id:
        raise PoisonMessageError("request_id must be a non-empty string")
    return request_id


def receive_count(message: dict[str, Any]) -> int:
    return int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))


def is_final_attempt(message: dict[str, Any], max_receive_count: int) -> bool:
    """On this receive a failure goes to the DLQ (redrive after ``max_receive_count``)."""
    return receive_count(message) >= max_receive_count


def retry_delay_s(message: dict[str, Any]) -> int:
    """Back off before the next delivery of a failing message: 1, 2, 4 … 60 s."""
    return int(min(60, 2 ** (receive_count(message) - 1)))


def outcome_of(
    request_id: str,
    result: Any,
    *,
    endpoint: str,
) -> tuple[str, dict[str, Any], Any]:
    """Classify an HPC function's result: (status, record fields, response-or-None).

    ``{"response", "engine_time_ms"}`` completes, or is ``cancelled`` when its stream was
    stopped before the end (``stream_stats.cancelled``: the client went away), keeping the
    response and usage of what ran; ``{"error", "status_code"}`` fails with the engine's own
    OpenAI error; anything else is a broken function and fails with a 500.
    """
    if isinstance(result, dict) and isinstance(result.get("response"), dict):
        response = result["response"]
        fields = {
            "usage": response.get("usage") or {},
            "engine_time_ms": float(result.get("engine_time_ms") or 0.0),
            "endpoint": endpoint,
        }
        stats = result.get("stream_stats")
        if isinstance(stats, dict):
            # A streamed run's own account: timings, pushes, whether the client went away.
            fields["stream_stats"] = stats
            if stats.get("cancelled") is True:
                return "cancelled", fields, response
        return "completed", fields, response
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        return (
            "failed",
            {
                "error": result["error"],
                "status_code": int(result.get("status_code") or 500),
                "endpoint": endpoint,
            },
            None,
        )
    return "failed", engine_failure(request_id, "the function returned no response"), None


# How a task gets its request body (``body_source``).
INLINE = "inline"  # in the task
BY_URL = "url"  # a presigned GET of the API's S3 copy: the poller never reads it
UPLOAD = "upload"  # held in the record but over the threshold: put in S3, then as BY_URL
MEASURE = "measure"  # in S3 with no size on the record (written before sizes were): read it


def body_source(record: Mapping[str, Any], over_bytes: int | None) -> str:
    """How the request body of ``record`` travels to the HPC function; ``over_bytes`` is the
    size above which it goes by S3 (None: the S3 path is off, always inline).

    The API stores a body over its inline limit in S3 with its size (``payload_key``,
    ``payload_bytes``); one over ``over_bytes`` is handed over by URL, one of a size the record
    does not give is read first (then asked again with its size). A body held in the record
    goes inline unless it is over ``over_bytes`` (only when the inline limit is set above it).
    """
    if over_bytes is None:
        return INLINE
    if record.get("payload_key"):
        size = record.get("payload_bytes")
        if size is None:
            return MEASURE
        return BY_URL if int(size) > over_bytes else INLINE
    text = record.get("payload")
    # A character is at most 4 bytes in UTF-8: most bodies are decided without encoding them.
    if isinstance(text, str) and len(text) * 4 > over_bytes and len(text.encode()) > over_bytes:
        return UPLOAD
    return INLINE


def body_from(url: str, size_bytes: int | None) -> dict[str, Any]:
    """The task's ``body_from``: where the HPC function fetches the body (a presigned GET)."""
    return {"url": url, "bytes": size_bytes}


def result_key(request_id: str, token: str) -> str:
    """Where one task may store its result: a key of its own per submission (``token``), so a
    task abandoned on a timeout that finishes late cannot overwrite a result already given."""
    return f"requests/{request_id}/task-result-{token}.json"


def result_to(url: str, key: str, over_bytes: int) -> dict[str, Any]:
    """The task's ``result_to``: a result over ``over_bytes`` is PUT to ``url`` (a presigned
    PUT of ``key``), and the function returns ``{"result_at": {"key", "bytes"}}`` instead."""
    return {"url": url, "key": key, "over_bytes": over_bytes}


def stored_result_key(request_id: str, result: Any) -> str | None:
    """The S3 key of a result the HPC function stored (``{"result_at": {"key", "bytes"}}``);
    None for a result carried in the task. A key outside this request's own prefix is not
    followed: the result then fails as one without a response."""
    if not isinstance(result, dict) or set(result) != {"result_at"}:
        return None
    pointer = result["result_at"]
    key = pointer.get("key") if isinstance(pointer, dict) else None
    if isinstance(key, str) and key.startswith(f"requests/{request_id}/task-result-"):
        return key
    return None


def task_too_large(request_id: str, detail: str) -> dict[str, Any]:
    """A request whose task the executor refused as over the service's submission limit."""
    return PayloadTooLargeError(f"Request {request_id} is too large to run: {detail}.").to_record()


def result_too_large(
    request_id: str, size_bytes: int | None, limit_bytes: int | None
) -> dict[str, Any]:
    """A request whose result the endpoint refused as over the service's result limit (the
    sizes when the endpoint gave them; never its traceback)."""
    size = f" is {size_bytes} bytes," if size_bytes is not None else ""
    limit = f" of {limit_bytes} bytes" if limit_bytes is not None else ""
    return EngineFailedError(
        f"The result of request {request_id}{size} over Globus Compute's result limit{limit}.",
        code="result_too_large",
    ).to_record()


def engine_failure(request_id: str, detail: str) -> dict[str, Any]:
    return EngineFailedError(
        f"The engine failed while running request {request_id}: {detail}"
    ).to_record()


def compute_failure(request_id: str, exc: ComputeError) -> dict[str, Any] | None:
    """The one translation of the compute adapter's errors: the request's failure (its
    record's ``{"error", "status_code"}``) for a task too large, a result too large or the
    function's own error; None for the endpoint's failure (the poller runs it elsewhere)."""
    if isinstance(exc, TaskTooLargeError):
        return task_too_large(request_id, str(exc))
    if isinstance(exc, ResultTooLargeError):
        return result_too_large(request_id, exc.size_bytes, exc.limit_bytes)
    if isinstance(exc, RemoteTaskError):
        return engine_failure(request_id, str(exc))
    return None


def notice_for(
    request_id: str,
    status: str,
    fields: dict[str, Any],
    result_text: str | None,
    inline_limit: int,
) -> str:
    """The reply notice's body: carries the answer when it fits, else only the status.

    ``result_text`` is the response already serialised for the record; it is spliced in as
    is rather than serialised a second time.
    """
    notice: dict[str, Any] = {"request_id": request_id, "status": status}
    if status == "completed":
        if result_text is not None and len(result_text) <= inline_limit:
            notice["engine_time_ms"] = fields.get("engine_time_ms")
            notice["endpoint"] = fields.get("endpoint")
            head = json.dumps(notice, separators=(",", ":"))
            return f'{head[:-1]},"result":{result_text}}}'
    else:
        notice["error"] = fields.get("error")
        notice["status_code"] = fields.get("status_code")
    return json.dumps(notice, separators=(",", ":"))
