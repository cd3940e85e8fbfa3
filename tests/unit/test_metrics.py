"""EMF metrics: names, units and dimensions as CloudWatch reads them, from a captured sink."""

from __future__ import annotations

from typing import Any

import pytest
from chalice.app import Response
from chalice.test import Client

from chalicelib import metrics
from chalicelib.consumer.accounting import Accounting, handled_errors_gauge, usage_of
from chalicelib.errors import AuthenticationError, RateLimitError, StreamGoneError
from chalicelib.http import ThreadSafeChalice, openai_route
from chalicelib.logs import get_logger
from chalicelib.metrics import MetricsRecorder
from chalicelib.streaming.relay import Relay


def recorder() -> tuple[MetricsRecorder, list[str]]:
    out: list[str] = []
    return MetricsRecorder("first-test", namespace="FIRST-test", sink=out.append), out


def by_metric(out: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each metric name → the (dimensions, unit, values) it was written with."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for doc in metrics.documents(out):
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "FIRST-test"
        (dims,) = directive["Dimensions"]  # one dimension set per document
        for m in directive["Metrics"]:
            seen.setdefault(m["Name"], []).append(
                {
                    "dims": {d: doc[d] for d in dims},
                    "unit": m["Unit"],
                    "values": doc[m["Name"]],
                }
            )
    return seen


def test_an_api_error_is_counted_by_route_status_and_code_and_timed_by_route() -> None:
    m, out = recorder()
    metrics.api_request(m, route="/v1/chat/completions", status=200, latency_ms=12.5, model="a/b")
    metrics.api_request(
        m, route="/v1/chat/completions", status=429, latency_ms=3.0, code="rate_limit_exceeded"
    )
    assert out == []  # nothing is written before a flush
    assert m.flush() == 5
    seen = by_metric(out)
    route = "/v1/chat/completions"
    assert sorted((x["dims"]["status"], x["values"]) for x in seen["ApiRequests"]) == [
        ("200", [1.0]),
        ("429", [1.0]),
    ]
    latency = {x["dims"].get("model"): x for x in seen["ApiLatency"]}
    assert latency["a/b"]["dims"] == {"route": route, "model": "a/b", "service": "first-test"}
    assert latency["a/b"]["unit"] == "Milliseconds"
    assert latency[None]["values"] == [3.0]  # no model dimension when none is known
    (error,) = seen["ApiErrors"]
    assert error["dims"] == {
        "route": route,
        "status": "429",
        "code": "rate_limit_exceeded",
        "service": "first-test",
    }
    assert error["unit"] == "Count"
    assert m.flush() == 0  # flushed sets are gone


def test_a_metric_with_more_than_99_values_is_written_in_several_documents() -> None:
    m, out = recorder()
    for i in range(250):
        m.add("QueueWait", metrics.MS, float(i), model="m")
    m.flush()
    docs = by_metric(out)["QueueWait"]
    assert [len(d["values"]) for d in docs] == [99, 99, 52]
    assert [v for d in docs for v in d["values"]] == [float(i) for i in range(250)]
    assert all(d["dims"] == {"model": "m", "service": "first-test"} for d in docs)


def test_a_finished_stream_is_timed_counted_and_its_tokens_recorded_per_model_and_deployment() -> (
    None
):
    m, out = recorder()
    usage: list[Any] = []
    accounting = Accounting(m, get_logger("t"), usage=None)
    record = {
        "request_id": "req_1",
        "owner": "alice",
        "model": "first/tiny-chat",
        "function": "chat_completions",
        "created_at": 1000.0,
        "dispatched_at": 1000.25,
        "stream": {"connection_id": "c"},
    }
    fields = {
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        "engine_time_ms": 40.0,
        "endpoint": "local-a",
        "stream_stats": {"first_token_at": 1000.5},
    }
    accounting.finished(record, "completed", fields)
    accounting.close()
    seen = by_metric(out)
    where = {"model": "first/tiny-chat", "deployment": "local-a", "service": "first-test"}
    for name, unit, values in (
        ("EngineTime", "Milliseconds", [40.0]),
        ("TimeToFirstToken", "Milliseconds", [500.0]),
        ("PromptTokens", "Count", [7.0]),
        ("CompletionTokens", "Count", [3.0]),
    ):
        (x,) = seen[name]
        assert (x["dims"], x["unit"], x["values"]) == (where, unit, values), name
    (queue,) = seen["QueueWait"]
    assert queue["dims"] == {"model": "first/tiny-chat", "service": "first-test"}
    assert queue["values"] == [250.0]
    (finished,) = seen["RequestsFinished"]
    assert finished["dims"] == {**where, "mode": "stream", "status": "completed"}
    assert "RequestErrors" not in seen
    assert usage == [] and accounting.counts == {}


def test_a_cancelled_stream_is_counted_cancelled_not_failed_with_the_tokens_that_ran() -> None:
    record = {"request_id": "req_3", "owner": "carol", "model": "m", "stream": {"x": 1}}
    fields = {"usage": {"prompt_tokens": 5, "completion_tokens": 17}, "endpoint": "local-a"}
    u = usage_of({**record, "created_at": 10.0}, "cancelled", fields, now=12.0)
    assert (u.status, u.cancelled, u.errors, u.requests, u.error_code) == (
        "cancelled",
        1,
        0,
        1,
        None,
    )
    assert (u.prompt_tokens, u.completion_tokens, u.mode) == (5, 17, "stream")
    m, out = recorder()
    Accounting(m, get_logger("t")).finished(record, "cancelled", fields)
    m.flush()
    seen = by_metric(out)
    assert "RequestErrors" not in seen
    (finished,) = seen["RequestsFinished"]
    assert finished["dims"]["status"] == "cancelled"


def test_a_failed_request_is_an_error_by_status_and_code_and_its_usage_says_so() -> None:
    record = {"request_id": "req_2", "owner": "bob", "model": "m", "function": "completions"}
    fields = {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "engine_error"},
        "status_code": 500,
        "endpoint": "local-b",
    }
    u = usage_of({**record, "created_at": 10.0}, "failed", fields, now=12.0)
    assert (u.status, u.status_code, u.error_code, u.errors, u.requests) == (
        "failed",
        500,
        "engine_error",
        1,
        1,
    )
    assert (u.mode, u.endpoint, u.duration_ms, u.engine_ms, u.ttft_ms) == (
        "interactive",
        "local-b",
        2000.0,
        None,
        None,
    )
    m, out = recorder()
    Accounting(m, get_logger("t")).finished(record, "failed", fields)
    m.flush()
    (error,) = by_metric(out)["RequestErrors"]
    assert error["dims"] == {
        "model": "m",
        "deployment": "local-b",
        "status": "500",
        "code": "engine_error",
        "service": "first-test",
    }


@pytest.mark.parametrize("route", ["responses", "messages"])
def test_a_dialects_call_is_counted_under_its_route_not_the_chat_it_ran_as(route: str) -> None:
    # What Gateway.submit records for a Responses or Messages call: it runs as chat.
    record = {
        "request_id": "req_4",
        "owner": "dan",
        "model": "m",
        "function": "chat_completions",
        "route": route,
    }
    u = usage_of({**record, "created_at": 10.0}, "completed", {}, now=11.0)
    assert u.function == route
    assert usage_of({**record, "route": None}, "completed", {}, now=11.0).function == (
        "chat_completions"
    )


def test_accounting_that_fails_is_counted_and_never_raises() -> None:
    m, _ = recorder()
    accounting = Accounting(m, get_logger("t"))
    accounting.finished({"owner": "x"}, "completed", {})  # no request_id: usage_of raises
    assert accounting.counts == {"accounting_errors": 1}


def test_gauges_are_sampled_before_each_flush_and_handled_errors_are_deltas() -> None:
    m, out = recorder()
    counts: dict[str, int] = {"receive_errors": 2}
    from collections import Counter

    counter = Counter(counts)
    m.gauge(
        lambda r: metrics.poller_gauges(r, inflight=5, waiting=2, queue_depth=11),
    )
    m.gauge(handled_errors_gauge(counter))
    m.close()
    counter["receive_errors"] += 3
    m.close()
    seen = by_metric(out)
    assert [x["values"] for x in seen["PollerInFlight"]] == [[5.0], [5.0]]
    (depth, _) = seen["QueueDepth"]
    assert depth["dims"] == {"queue": "interactive", "service": "first-test"}
    assert [x["values"] for x in seen["HandledErrors"]] == [[2.0], [3.0]]
    assert seen["HandledErrors"][0]["dims"]["kind"] == "receive_errors"


def test_the_api_edge_records_each_call_with_a_model_dimension_only_for_known_models() -> None:
    m, out = recorder()
    app = ThreadSafeChalice(app_name="t")
    route = openai_route(get_logger("t"), lambda: app.current_request, m, lambda: {"known-m"})

    @app.route("/v1/x/{model}")
    @route
    def view(log: dict[str, Any], model: str) -> Response:
        log["model"] = model
        if model == "limited":
            raise RateLimitError("slow down")
        return Response(body="{}", status_code=200)

    with Client(app) as client:
        assert client.http.get("/v1/x/known-m").status_code == 200
        assert len(out) == 2  # flushed as each call is answered (a Lambda may freeze)
        client.http.get("/v1/x/a-prompt-pasted-as-a-model")
        client.http.get("/v1/x/limited")
    seen = by_metric(out)
    models = sorted(str(x["dims"].get("model")) for x in seen["ApiLatency"])
    assert models == ["None", "None", "known-m"]
    assert {x["dims"]["route"] for x in seen["ApiRequests"]} == {"/v1/x/{model}"}
    (error,) = seen["ApiErrors"]
    assert (error["dims"]["status"], error["dims"]["code"]) == ("429", "rate_limit_exceeded")


def test_a_batch_shard_is_one_usage_record_of_its_lines_and_its_metrics_are_flushed_at_once() -> (
    None
):
    from chalicelib.batch.accounting import BatchAccounting, shard_usage

    record = {
        "owner": "carol",
        "batch_id": "batch_1",
        "model": "first/tiny-chat",
        "endpoint": "/v1/chat/completions",
    }
    result = {"engine_time_ms": 80.0, "prompt_tokens": 40, "completion_tokens": 12}
    u = shard_usage(record, 3, 3, 1, "local-a", result, now=5.0)
    assert (u.request_id, u.mode, u.function, u.requests, u.errors, u.status) == (
        "batch_1-shard-3",
        "batch",
        "chat_completions",
        4,
        1,
        "completed",
    )
    assert (u.prompt_tokens, u.completion_tokens, u.endpoint) == (40, 12, "local-a")
    lost = shard_usage(record, 4, 0, 4, None, {}, now=5.0)
    assert (lost.status, lost.error_code, lost.errors) == ("failed", "shard_failed", 4)

    m, out = recorder()
    BatchAccounting(m, get_logger("t")).shard(record, 3, 3, 1, "local-a", result)
    seen = by_metric(out)  # flushed by ``shard`` itself: no flush here
    where = {"model": "first/tiny-chat", "deployment": "local-a", "service": "first-test"}
    assert (seen["BatchLinesCompleted"][0]["dims"], seen["BatchLinesCompleted"][0]["values"]) == (
        where,
        [3.0],
    )
    assert seen["BatchLinesFailed"][0]["values"] == [1.0]
    assert seen["BatchShardEngineTime"][0]["unit"] == "Milliseconds"
    assert seen["PromptTokens"][0]["values"] == [40.0]


@pytest.mark.parametrize(
    ("endpoint", "route"),
    [
        ("/v1/responses", "responses"),
        ("/v1/messages", "messages"),
        ("/v1/embeddings", "embeddings"),
    ],
)
def test_a_dialects_batch_shard_is_counted_under_its_route(endpoint: str, route: str) -> None:
    from chalicelib.batch.accounting import shard_usage

    record = {"owner": "carol", "batch_id": "batch_2", "model": "m", "endpoint": endpoint}
    assert shard_usage(record, 0, 1, 0, "local-a", {}, now=5.0).function == route


def test_relay_pushes_are_counted_by_outcome_and_frames_posted() -> None:
    from tests.unit.test_streaming import KEY, RecordingPoster, mint_for, push

    m, out = recorder()
    poster = RecordingPoster()
    relay = Relay(KEY, poster, m)  # type: ignore[arg-type]
    token = mint_for(KEY, "req_1", "conn-a", None, 60)
    relay.push(token, push(1, "a", "b"))
    relay.push(token, push(1, "a", "b"))  # a retry
    with pytest.raises(AuthenticationError):
        relay.push(mint_for(KEY, "req_1", "conn-a", None, -1), push(2, "c"))
    poster.gone.add("conn-a")
    with pytest.raises(StreamGoneError):
        relay.push(token, push(2, "c"))
    m.flush()
    seen = by_metric(out)
    pushes = {e["dims"]["outcome"]: e["values"] for e in seen["RelayPushes"]}
    assert pushes == {"posted": [1.0], "duplicate": [1.0], "refused": [1.0], "gone": [1.0]}
    assert [e["values"] for e in seen["RelayFrames"]] == [[2.0]]


def test_stream_refusals_are_counted_by_status_and_code() -> None:
    m, out = recorder()
    metrics.stream_refused(m, status=429, code="rate_limit_exceeded")
    metrics.stream_admitted(m, model=None)  # a model outside the registry: no dimension
    m.flush()
    seen = by_metric(out)
    (refusal,) = seen["StreamRefusals"]
    assert refusal["dims"]["status"] == "429"
    assert refusal["dims"]["code"] == "rate_limit_exceeded"
    assert [e["dims"].get("model") for e in seen["StreamRequests"]] == [None]


def test_each_document_goes_to_stdout_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """One write per line: with print()'s two writes (text, then newline) two threads could
    put two documents on one line of a log, which CloudWatch cannot read as EMF."""
    writes: list[str] = []

    class Stdout:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stdout", Stdout())
    m = MetricsRecorder("first-test", namespace="FIRST-test")
    metrics.api_request(m, route="/v1/models", status=200, latency_ms=1.0)
    assert m.flush() == 2
    assert len(writes) == 2 and all(w.endswith("}\n") and w.count("\n") == 1 for w in writes)
