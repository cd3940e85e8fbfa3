"""Every error body is OpenAI-shaped; engine errors keep their status and fields."""

from chalicelib import errors


def test_error_tree_statuses_and_shapes() -> None:
    cases = {
        errors.BadRequestError: 400,
        errors.PayloadTooLargeError: 413,
        errors.AuthenticationError: 401,
        errors.ModelNotFoundError: 404,
        errors.RateLimitError: 429,
        errors.EngineFailedError: 500,
        errors.WaitTimeoutError: 504,
    }
    for cls, status in cases.items():
        exc = cls("boom")
        assert exc.STATUS_CODE == status
        body = exc.to_body()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        assert body["code"] is None or isinstance(body["code"], str)


def test_request_id_is_carried_when_known() -> None:
    body = errors.WaitTimeoutError("later", request_id="req_1").to_body()["error"]
    assert body["request_id"] == "req_1" and body["code"] == "timeout"


def test_engine_results_map_back_to_their_classes() -> None:
    err = {"message": "long", "param": "messages", "code": "context_length_exceeded"}
    exc = errors.error_from_result(err, 400, "req_1")
    assert isinstance(exc, errors.BadRequestError) and exc.param == "messages"
    assert exc.code == "context_length_exceeded"
    crash = errors.error_from_result({}, 500, "req_2")
    assert isinstance(crash, errors.EngineFailedError) and crash.request_id == "req_2"


def test_a_failed_records_error_comes_back_as_the_error_it_was() -> None:
    exc = errors.PayloadTooLargeError("too big", param="messages")
    record = exc.to_record()
    assert record == {**exc.to_body(), "status_code": 413}
    again = errors.error_from_result(record["error"], record["status_code"], "req_1")
    assert type(again) is errors.PayloadTooLargeError
    assert (again.message, again.param, again.code) == ("too big", "messages", "request_too_large")


def test_an_edge_error_keeps_its_status_and_is_typed_by_it() -> None:
    refused = errors.EdgeError(405, "Method GET is not allowed.", code="method_not_allowed")
    assert refused.STATUS_CODE == 405 and errors.FirstError.STATUS_CODE == 500
    assert refused.to_body() == {
        "error": {
            "message": "Method GET is not allowed.",
            "type": "invalid_request_error",
            "param": None,
            "code": "method_not_allowed",
        }
    }
    assert errors.EdgeError(503, "busy").to_body()["error"]["type"] == "server_error"
