"""The poller's pure decisions: message parsing, retries, result classification, notices."""

import json

import pytest

from chalicelib.poller import planning


def message(body: object, receives: int = 1) -> dict:
    return {
        "Body": body if isinstance(body, str) else json.dumps(body),
        "ReceiptHandle": "r",
        "Attributes": {"ApproximateReceiveCount": str(receives)},
    }


def test_request_id_is_read_from_the_body() -> None:
    assert planning.request_id_of(message({"request_id": "req_1"})) == "req_1"


@pytest.mark.parametrize("body", ["not json", {"other": 1}, {"request_id": ""}, [1]])
def test_unreadable_bodies_are_poison(body: object) -> None:
    with pytest.raises(planning.PoisonMessageError):
        planning.request_id_of(message(body))


def test_final_attempt_and_backoff_follow_the_receive_count() -> None:
    assert not planning.is_final_attempt(message({}, 2), 3)
    assert planning.is_final_attempt(message({}, 3), 3)
    assert [planning.retry_delay_s(message({}, n)) for n in (1, 2, 3, 8)] == [1, 2, 4, 60]


def test_a_response_completes_with_usage_and_engine_time() -> None:
    response = {"object": "chat.completion", "usage": {"total_tokens": 5}}
    status, fields, out = planning.outcome_of(
        "req_1", {"response": response, "engine_time_ms": 12.5}, endpoint="local"
    )
    assert status == "completed" and out is response
    assert fields == {"usage": {"total_tokens": 5}, "engine_time_ms": 12.5, "endpoint": "local"}


def test_a_stream_its_client_left_is_cancelled_keeping_what_ran_and_its_usage() -> None:
    # It was classified completed: GET /v1/requests/{id} said completed, finish_reason stop,
    # after 17 of 2,000 tokens.
    response = {"object": "chat.completion", "usage": {"completion_tokens": 17}}
    stats = {"cancelled": True, "completion_tokens": 17, "max_tokens": 2000}
    result = {"response": response, "engine_time_ms": 80.0, "stream_stats": stats}
    status, fields, out = planning.outcome_of("req_1", result, endpoint="local")
    assert status == "cancelled" and out is response
    assert fields["usage"] == {"completion_tokens": 17} and fields["stream_stats"] == stats
    finished = {**result, "stream_stats": {**stats, "cancelled": False}}
    assert planning.outcome_of("req_1", finished, endpoint="local")[0] == "completed"


def test_an_engine_error_fails_with_the_engines_own_status() -> None:
    error = {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    status, fields, out = planning.outcome_of(
        "req_1", {"error": error, "status_code": 400}, endpoint="local"
    )
    assert status == "failed" and out is None
    assert fields["error"] == error and fields["status_code"] == 400


def test_garbage_from_a_function_is_a_500_naming_the_request() -> None:
    status, fields, _ = planning.outcome_of("req_9", "oops", endpoint="local")
    assert status == "failed" and fields["status_code"] == 500
    assert "req_9" in fields["error"]["message"]


def test_notice_carries_the_answer_only_when_it_fits() -> None:
    fields = {"engine_time_ms": 3.0}
    small = json.loads(planning.notice_for("r", "completed", fields, '{"x":"y"}', 100))
    assert small["result"] == {"x": "y"} and small["engine_time_ms"] == 3.0
    big_text = json.dumps({"x": "y" * 200})
    big = json.loads(planning.notice_for("r", "completed", fields, big_text, inline_limit=100))
    assert "result" not in big and big["status"] == "completed"


def test_a_failure_notice_carries_the_error() -> None:
    fields = {"error": {"message": "m", "code": "engine_error"}, "status_code": 500}
    notice = json.loads(planning.notice_for("r", "failed", fields, None, inline_limit=100))
    assert notice["error"]["code"] == "engine_error" and notice["status_code"] == 500


def test_the_record_a_message_carries_is_read_and_a_message_of_only_an_id_has_none() -> None:
    record = {"owner": "u", "model": "m", "function": "chat_completions", "created_at": 1.0}
    carried = message({"request_id": "req_1", "record": record})
    assert planning.record_of(carried) == record
    assert planning.hints_from(record) == planning.Hints("u", "m", "chat_completions")
    assert planning.record_of(message({"request_id": "req_1"})) is None
    assert planning.record_of(message({"request_id": "req_1", "record": "x"})) is None
    assert planning.record_of(message("not json")) is None


def test_the_compute_adapters_errors_are_translated_in_one_place() -> None:
    from chalicelib.compute import errors as compute

    too_large = planning.compute_failure("req_1", compute.TaskTooLargeError(9_000_000, 5_000_000))
    assert too_large is not None and too_large["status_code"] == 413
    assert too_large["error"]["code"] == "request_too_large"
    result = planning.compute_failure(
        "req_1", compute.ResultTooLargeError("Task result of 9B exceeded current limit of 5B")
    )
    assert result is not None and result["status_code"] == 500
    assert result["error"]["code"] == "result_too_large"
    raised = planning.compute_failure("req_1", compute.RemoteTaskError("ValueError: no"))
    assert raised is not None and raised["error"]["code"] == "engine_error"
    assert "ValueError: no" in raised["error"]["message"]
    # The endpoint's own failures are no failure of the request: the poller fails over.
    for exc in (
        compute.TaskLostError("worker lost"),
        compute.TransferFailedError("PresignedUrlError: 503"),
        compute.TaskTimeoutError("late"),
        compute.EndpointUnreachableError("refused"),
    ):
        assert planning.compute_failure("req_1", exc) is None
