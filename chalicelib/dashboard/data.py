"""What the operator page shows, gathered in one JSON document (``GET /v1/dashboard/summary``).

Sources, each read once per call (docs/operations.md "Dashboard"):

- deployments: ``Fleet.endpoints()`` (the endpoints table, as ``GET /v1/endpoints``);
- the interactive queue: SQS's approximate counts (``RequestQueue.counts``), and the age of the
  oldest message it still holds, computed from the oldest unfinished request record (the
  requests table's sparse ``pending`` index): the poller deletes a request's message only once
  the request is finished, so the two are the same message. SQS itself publishes that age only
  as a CloudWatch metric, and peeking at the queue would count as a receive (towards the DLQ);
- traffic (requests, error rate, tokens per minute, top users, requests by route): the usage records of the
  requests finished in the window (``UsageStore.records``, everyone's), added up here by
  ``traffic``, a pure function;
- recent failures: the failed ones among those records, the latest first; each one's status,
  error code and endpoint from its request record (``RequestStore.get``; batch shards have
  none and show what the usage record says).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from chalicelib.errors import BadRequestError

DEFAULT_WINDOW_S = 3600
MAX_WINDOW_S = 24 * 3600
BUCKET_S = 60
TOP_USERS = 10
RECENT_FAILURES = 20


class FleetView(Protocol):
    def endpoints(self) -> dict[str, Any]: ...


class QueueCounts(Protocol):
    def counts(self) -> dict[str, int]: ...


class Requests(Protocol):
    def oldest_pending(self) -> tuple[str, float] | None: ...

    def get(self, request_id: str) -> Mapping[str, Any] | None: ...


class UsageRecords(Protocol):
    def records(
        self, start: int, end: int, owner: str | None = None
    ) -> Iterable[Mapping[str, Any]]: ...


def window_from_query(query: Mapping[str, str]) -> int:
    """``?window_s=`` (seconds, 60 … 86400; default 3600), or a 400 naming it."""
    raw = query.get("window_s")
    if raw is None:
        return DEFAULT_WINDOW_S
    try:
        window_s = int(raw)
    except ValueError:
        window_s = 0
    if not 60 <= window_s <= MAX_WINDOW_S:
        raise BadRequestError(
            f"window_s must be an integer from 60 to {MAX_WINDOW_S}.", param="window_s"
        )
    return window_s


def _int(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    return int(value) if isinstance(value, int | float) else 0


def _finished(record: Mapping[str, Any]) -> tuple[float, str]:
    """(finished_at, request id): the sort key is ``<finished_at ms, 13 digits>#<request id>``."""
    ms, _, request_id = str(record.get("sk") or "").partition("#")
    at = record.get("finished_at")
    return (float(at) if at is not None else int(ms or 0) / 1000), str(
        record.get("request_id") or request_id
    )


def traffic(
    records: Iterable[Mapping[str, Any]], now: float, window_s: int, bucket_s: int = BUCKET_S
) -> dict[str, Any]:
    """Counts, per-minute series, top users and the latest failures of the usage records that
    finished in ``(now - window_s, now]``. A record counts ``requests`` (a batch shard many),
    ``errors`` of them failed."""
    start = now - window_s
    first_bucket = int(start // bucket_s) * bucket_s
    n_buckets = int((now - first_bucket) // bucket_s) + 1
    tokens_in = [0] * n_buckets
    tokens_out = [0] * n_buckets
    done = [0] * n_buckets
    failed = [0] * n_buckets
    tokens_by_user: Counter[str] = Counter()
    requests_by_user: Counter[str] = Counter()
    # By the route a call came by (usage's ``function``: responses, messages, chat_completions…).
    requests_by_function: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    for record in records:
        at, request_id = _finished(record)
        if not start < at <= now:
            continue
        i = min(int((at - first_bucket) // bucket_s), n_buckets - 1)
        prompt, completion = _int(record, "prompt_tokens"), _int(record, "completion_tokens")
        requests, errors = max(1, _int(record, "requests")), _int(record, "errors")
        tokens_in[i] += prompt
        tokens_out[i] += completion
        done[i] += max(0, requests - errors)
        failed[i] += errors
        user = str(record.get("owner") or "")
        tokens_by_user[user] += prompt + completion
        requests_by_user[user] += requests
        requests_by_function[str(record.get("function") or "")] += requests
        if errors:
            failures.append(
                {
                    "request_id": request_id,
                    "finished_at": round(at, 3),
                    "user": user,
                    "model": record.get("model"),
                    "errors": errors,
                }
            )
    total, errors_total = sum(done) + sum(failed), sum(failed)
    tokens = sum(tokens_in) + sum(tokens_out)
    failures.sort(key=lambda f: (f["finished_at"], f["request_id"]), reverse=True)
    top = sorted(tokens_by_user.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_USERS]
    return {
        "requests": total,
        "failed": errors_total,
        "error_rate": round(errors_total / total, 4) if total else None,
        "prompt_tokens": sum(tokens_in),
        "completion_tokens": sum(tokens_out),
        "tokens_per_minute": round(tokens * 60 / window_s, 2),
        "top_users": [
            {"user": user, "tokens": n, "requests": requests_by_user[user]} for user, n in top
        ],
        "by_function": dict(sorted(requests_by_function.items())),
        "recent_failures": failures[:RECENT_FAILURES],
        "series": {
            "bucket_s": bucket_s,
            "t": [first_bucket + i * bucket_s for i in range(n_buckets)],
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "completed": done,
            "failed": failed,
        },
    }


def failure_detail(failure: dict[str, Any], record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A failure as the page lists it: with its request record's status, error and endpoint."""
    error = (record or {}).get("error")
    error = error if isinstance(error, dict) else {}
    return {
        **failure,
        "status_code": (record or {}).get("status_code"),
        "error_code": error.get("code"),
        "error_type": error.get("type"),
        "endpoint": (record or {}).get("endpoint"),
    }


class Dashboard:
    def __init__(
        self,
        fleet: FleetView,
        queue: QueueCounts,
        requests: Requests,
        usage: UsageRecords,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._queue = queue
        self._requests = requests
        self._usage = usage
        self._clock = clock

    def summary(self, window_s: int = DEFAULT_WINDOW_S) -> dict[str, Any]:
        now = self._clock()
        endpoints = self._fleet.endpoints()["data"]
        counts = self._queue.counts()
        oldest = self._requests.oldest_pending()
        # Whole seconds: the usage store's range is [start, end) in unix seconds.
        records = self._usage.records(int(now) - window_s + 1, int(now) + 1)
        summary = traffic(records, now, window_s)
        summary["recent_failures"] = [
            failure_detail(f, self._requests.get(str(f["request_id"])))
            for f in summary["recent_failures"]
        ]
        return {
            "object": "dashboard.summary",
            "generated_at": round(now, 3),
            "window_s": window_s,
            "endpoints": endpoints,
            "inflight": sum(int(e["inflight"]) for e in endpoints),
            "capacity": sum(int(e["capacity"]) for e in endpoints),
            "queue": {
                "depth": counts["visible"],
                "in_flight_messages": counts["in_flight"],
                "delayed": counts["delayed"],
                "oldest_age_s": round(max(0.0, now - oldest[1]), 3) if oldest else None,
                "oldest_request_id": oldest[0] if oldest else None,
            },
            "traffic": summary,
        }
