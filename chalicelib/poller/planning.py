"""Pure decisions of the poller (no I/O): unit-tested on plain values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


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


def record_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The queued record the message carries (the API's, for the claim to write), or None: a
    message of only ``request_id`` names a record already written."""
    try:
        record = json.loads(message["Body"]).get("record")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) and "created_at" in record else None


def hints_from(record: dict[str, Any]) -> Hints:
    return Hints(
        str(record.get("owner") or ""), str(record.get("model")), str(record.get("function"))
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

    ``{"response", "engine_time_ms"}`` completes; ``{"error", "status_code"}`` fails with the
    engine's own OpenAI error; anything else is a broken function and fails with a 500.
    """
    if isinstance(result, dict) and isinstance(result.get("response"), dict):
        response = result["response"]
        fields = {
            "usage": response.get("usage") or {},
            "engine_time_ms": float(result.get("engine_time_ms") or 0.0),
            "endpoint": endpoint,
        }
        if isinstance(result.get("stream_stats"), dict):
            # A streamed run's own account: timings, pushes, whether the client went away.
            fields["stream_stats"] = result["stream_stats"]
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


def engine_failure(request_id: str, detail: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"The engine failed while running request {request_id}: {detail}",
            "type": "server_error",
            "param": None,
            "code": "engine_error",
        },
        "status_code": 500,
    }


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
            head = json.dumps(notice, separators=(",", ":"))
            return f'{head[:-1]},"result":{result_text}}}'
    else:
        notice["error"] = fields.get("error")
        notice["status_code"] = fields.get("status_code")
    return json.dumps(notice, separators=(",", ":"))
