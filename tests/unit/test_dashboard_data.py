"""The operator page's numbers, added up from usage records (pure: no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.dashboard.assets import asset
from chalicelib.dashboard.data import failure_detail, traffic, window_from_query
from chalicelib.errors import BadRequestError, NotFoundError

NOW = 1_800_000_000.0


def record(ago_s: float, owner: str, prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    """A usage record as ``UsageStore.records`` returns it (sk carries time and id)."""
    ms = int((NOW - ago_s) * 1000)
    rid = extra.pop("rid", f"req_{owner}_{ms}")
    return {
        "owner": owner,
        "sk": f"{ms:013d}#{rid}",
        "model": "first/tiny-chat",
        "requests": 1,
        "errors": 0,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **extra,
    }


def test_totals_error_rate_tokens_per_minute_and_top_users() -> None:
    records = [
        record(10, "alice", 10, 20),
        record(70, "alice", 5, 5),
        record(30, "bob", 100, 0),
        record(20, "carol", 3, 0, errors=1, rid="req_failed"),
        # A batch shard: 8 lines, 2 failed.
        record(40, "dave", 1, 1, requests=8, errors=2, rid="shard_1"),
        record(4000, "old", 999, 999),  # outside the hour
    ]
    t = traffic(records, NOW, 3600)
    assert t["requests"] == 12 and t["failed"] == 3
    assert t["error_rate"] == pytest.approx(3 / 12, abs=1e-4)
    assert t["prompt_tokens"] == 119 and t["completion_tokens"] == 26
    assert t["tokens_per_minute"] == pytest.approx(145 / 60, abs=0.01)
    assert [u["user"] for u in t["top_users"]] == ["bob", "alice", "carol", "dave"]
    assert t["top_users"][1] == {"user": "alice", "tokens": 40, "requests": 2}
    assert [f["request_id"] for f in t["recent_failures"]] == ["req_failed", "shard_1"]
    assert t["recent_failures"][1]["errors"] == 2


def test_requests_are_counted_by_the_route_they_came_by() -> None:
    records = [
        record(10, "a", 1, 1, function="chat_completions"),
        record(20, "a", 1, 1, function="responses"),
        record(30, "b", 1, 1, function="responses"),
        record(40, "b", 1, 1, function="messages"),
        record(50, "c", 1, 1, function="chat_completions", requests=4, rid="shard_1"),
    ]
    assert traffic(records, NOW, 3600)["by_function"] == {
        "chat_completions": 5,
        "messages": 1,
        "responses": 2,
    }


def test_series_are_per_minute_buckets_covering_the_window() -> None:
    t = traffic([record(10, "a", 1, 2), record(70, "a", 4, 8, errors=1)], NOW, 600)
    s = t["series"]
    assert s["bucket_s"] == 60 and len(s["t"]) == len(s["prompt_tokens"]) == len(s["failed"])
    assert s["t"][0] <= NOW - 600 < s["t"][0] + 60 and s["t"][-1] <= NOW < s["t"][-1] + 60
    assert sum(s["prompt_tokens"]) == 5 and sum(s["completion_tokens"]) == 10
    assert sum(s["completed"]) == 0 + 1 and sum(s["failed"]) == 1
    newest = s["t"].index(int((NOW - 10) // 60) * 60)  # the minute the newest record is in
    assert s["completion_tokens"][newest] == 2 and s["failed"][newest] == 0


def test_no_traffic_has_no_error_rate_rather_than_zero() -> None:
    t = traffic([], NOW, 3600)
    assert t["requests"] == 0 and t["error_rate"] is None and t["top_users"] == []


def test_a_failure_takes_status_code_and_endpoint_from_its_request_record() -> None:
    failure = {"request_id": "r", "finished_at": NOW, "user": "u", "model": "m", "errors": 1}
    record = {
        "status_code": 503,
        "endpoint": "local-a",
        "error": {"code": "unavailable", "type": "server_error", "message": "x"},
    }
    detail = failure_detail(failure, record)
    assert detail["status_code"] == 503 and detail["error_code"] == "unavailable"
    assert detail["endpoint"] == "local-a"
    assert failure_detail(failure, None)["status_code"] is None  # a batch shard: no record


@pytest.mark.parametrize("raw", ["abc", "59", "86401", "-5", "1e3"])
def test_a_bad_window_is_a_400_naming_it(raw: str) -> None:
    with pytest.raises(BadRequestError) as info:
        window_from_query({"window_s": raw})
    assert info.value.param == "window_s"


def test_window_defaults_to_an_hour() -> None:
    assert window_from_query({}) == 3600 and window_from_query({"window_s": "900"}) == 900


def test_only_the_pages_own_files_are_served() -> None:
    text, headers = asset("index.html")
    assert "v1/dashboard/summary" not in text  # the shell holds no data and no route secrets
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in str(headers["Content-Security-Policy"])
    for name in ("../settings.py", "data.py", "static/index.html", ""):
        with pytest.raises(NotFoundError):
            asset(name)
