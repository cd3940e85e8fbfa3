"""Large bodies and results by S3, and Globus Compute's size limits: the pure parts.

Which way a body travels (``planning.body_source``), the task's URL fields and the function's
pointer, the errors that name the limits, how the executors measure a task as the service does,
and the HPC node's side of the transfer (``hpc_functions.offload``) against a real HTTP server
standing in for S3 behind presigned URLs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from globus_compute_sdk.sdk.batch import Batch, create_user_runtime

from chalicelib.compute.errors import (
    EndpointFailedError,
    RemoteTaskError,
    ResultTooLargeError,
    TaskTooLargeError,
    TransferFailedError,
    remote_error,
)
from chalicelib.compute.globus import _Submission, take_batch
from chalicelib.compute.sizes import (
    SUBMIT_ENVELOPE_BYTES,
    check_submission,
    pack_task,
    submitted_bytes,
)
from chalicelib.errors import FirstError
from chalicelib.poller import planning
from chalicelib.settings import Settings
from chalicelib.streaming.tokens import mint_for
from hpc_functions import offload
from hpc_functions.engines import run_task
from tests.servers import serving

KB = 1024
OVER = 256 * KB


# --- which way the body goes ------------------------------------------------------------


def test_a_small_body_held_in_the_record_goes_inline() -> None:
    assert planning.body_source({"payload": '{"a":1}'}, OVER) == planning.INLINE


def test_a_body_the_api_put_in_s3_goes_by_url_only_when_over_the_threshold() -> None:
    stored = {"payload_key": "requests/r/payload.json"}
    assert planning.body_source({**stored, "payload_bytes": OVER + 1}, OVER) == planning.BY_URL
    assert planning.body_source({**stored, "payload_bytes": OVER}, OVER) == planning.INLINE
    # A record from before sizes were kept: read to measure it, then asked again.
    assert planning.body_source(stored, OVER) == planning.MEASURE


def test_a_body_held_in_the_record_but_over_the_threshold_is_uploaded() -> None:
    # Only when the inline limit is set above the threshold; multi-byte text counts in bytes.
    assert planning.body_source({"payload": "x" * (OVER + 1)}, OVER) == planning.UPLOAD
    assert planning.body_source({"payload": "é" * (OVER // 2 + 1)}, OVER) == planning.UPLOAD
    assert planning.body_source({"payload": "é" * (OVER // 2)}, OVER) == planning.INLINE


def test_with_the_s3_path_off_every_body_goes_inline() -> None:
    stored = {"payload_key": "requests/r/payload.json", "payload_bytes": 6_000_000}
    assert planning.body_source(stored, None) == planning.INLINE
    assert planning.body_source({"payload": "x" * (OVER + 1)}, None) == planning.INLINE


# --- the task's fields and the function's pointer -----------------------------------------


def test_the_task_fields_and_the_pointer_have_their_shapes() -> None:
    assert planning.body_from("http://s3/get", 300_000) == {
        "url": "http://s3/get",
        "bytes": 300_000,
    }
    key = planning.result_key("req_1", "abc")
    assert key == "requests/req_1/task-result-abc.json"
    assert planning.result_to("http://s3/put", key, OVER) == {
        "url": "http://s3/put",
        "key": key,
        "over_bytes": OVER,
    }
    pointer = {"result_at": {"key": key, "bytes": 9_600_000}}
    assert planning.stored_result_key("req_1", pointer) == key


@pytest.mark.parametrize(
    "result",
    [
        {"response": {"id": "x"}, "engine_time_ms": 1.0},  # carried inline
        {"result_at": {"key": "requests/req_2/task-result-abc.json"}},  # another request's
        {"result_at": {"key": "requests/req_1/payload.json"}},  # not a task's result
        {"result_at": {"key": "requests/req_1/task-result-a.json"}, "response": {}},
        {"result_at": "requests/req_1/task-result-a.json"},
        None,
    ],
)
def test_only_a_pointer_into_the_requests_own_results_is_followed(result: Any) -> None:
    assert planning.stored_result_key("req_1", result) is None


def test_a_task_over_the_submission_limit_fails_413_naming_the_limit() -> None:
    exc = TaskTooLargeError(7_431_499, 5_000_000)
    failure = planning.task_too_large("req_1", str(exc))
    assert failure["status_code"] == 413
    error = failure["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert "req_1" in error["message"] and "7431499 bytes" in error["message"]
    assert "submission limit of 5000000 bytes" in error["message"]


def test_a_result_over_the_limit_is_told_apart_and_named_without_the_traceback() -> None:
    text = (
        "Traceback (most recent call last):\n  File worker.py, line 3\n"
        "globus_compute_sdk.errors.error_types.MaxResultSizeExceeded: Task result of 9600123B"
        " exceeded current limit of 512000B"
    )
    exc = remote_error(text)
    assert isinstance(exc, ResultTooLargeError)
    assert (exc.size_bytes, exc.limit_bytes) == (9_600_123, 512_000)
    failure = planning.result_too_large("req_1", exc.size_bytes, exc.limit_bytes)
    message = failure["error"]["message"]
    assert failure["status_code"] == 500 and failure["error"]["code"] == "result_too_large"
    assert "req_1 is 9600123 bytes" in message and "result limit of 512000 bytes" in message
    assert "Traceback" not in message
    # The exception's repr, as an endpoint may report it, gives the sizes too.
    repr_form = remote_error("MaxResultSizeExceeded(9600123, 524288)")
    assert isinstance(repr_form, ResultTooLargeError)
    assert (repr_form.size_bytes, repr_form.limit_bytes) == (9_600_123, 524_288)
    # Without the SDK's sizes the error still names the limit; anything else stays a crash.
    bare = remote_error("MaxResultSizeExceeded")
    assert isinstance(bare, ResultTooLargeError) and bare.size_bytes is None
    assert "result limit." in planning.result_too_large("r", None, None)["error"]["message"]
    assert type(remote_error("ValueError: bad prompt")) is RemoteTaskError


def test_a_node_that_could_not_use_its_url_is_the_endpoints_failure() -> None:
    text = (
        "Traceback (most recent call last):\n  File offload.py, line 40\n"
        "hpc_functions.offload.PresignedUrlError: could not fetch the request body: 503\n"
    )
    exc = remote_error(text)
    assert isinstance(exc, TransferFailedError) and isinstance(exc, EndpointFailedError)
    assert not isinstance(exc, FirstError)  # the poller translates it, never a client
    assert (
        str(exc) == "hpc_functions.offload.PresignedUrlError: could not fetch the request body: 503"
    )
    # The local endpoint's shape: the exception's name and text alone.
    assert isinstance(remote_error("PresignedUrlError: could not store"), TransferFailedError)


# --- measuring a task as the service does ---------------------------------------------------


def test_a_task_is_measured_as_the_sdks_submission_carries_it() -> None:
    task = {"request_id": "r", "body": {"messages": [{"role": "user", "content": "hé\n" * 500}]}}
    function_id = str(uuid.uuid4())
    batch = Batch(None, user_runtime=create_user_runtime())
    batch.add(function_id, (task,), {})
    payload = pack_task((task,), {})
    assert batch.tasks[uuid.UUID(function_id)] == [payload]  # Batch.add's own packing
    body = len(json.dumps(batch.prepare()))
    # The task's share of the body, and the envelope around it within the allowance.
    assert submitted_bytes(payload) - 2 == len(json.dumps(payload))
    assert submitted_bytes(payload) < body <= submitted_bytes(payload) + SUBMIT_ENVELOPE_BYTES


def test_the_submission_check_counts_the_envelope_and_can_be_off() -> None:
    check_submission(5_000_000 - SUBMIT_ENVELOPE_BYTES, 5_000_000)
    with pytest.raises(TaskTooLargeError) as info:
        check_submission(5_000_000 - SUBMIT_ENVELOPE_BYTES + 1, 5_000_000)
    assert info.value.limit_bytes == 5_000_000 and info.value.size_bytes == 5_000_001
    check_submission(10**9, None)


def sub(size_bytes: int) -> _Submission:
    return _Submission("f", "p", size_bytes)


def test_a_group_commit_stops_before_the_submission_limit() -> None:
    limit = 1_000_000
    room = limit - SUBMIT_ENVELOPE_BYTES
    outbox = [sub(room // 2), sub(room // 2), sub(1), sub(10)]
    batch, rest = take_batch(outbox, 64, limit)
    assert batch == outbox[:2] and rest == outbox[2:]
    # The count bound still holds, every task goes, and no limit means count only.
    assert take_batch(outbox, 1, limit) == (outbox[:1], outbox[1:])
    assert take_batch(outbox[2:], 64, limit) == (outbox[2:], [])
    assert take_batch(outbox, 64, None) == (outbox, [])


def test_the_offload_threshold_must_sit_under_the_result_limit() -> None:
    s = Settings()
    assert s.compute_offload and s.compute_offload_over_bytes < s.compute_result_limit_bytes
    assert (s.compute_submit_limit_bytes, s.compute_result_limit_bytes) == (5_000_000, 512_000)
    with pytest.raises(ValueError, match="compute_offload_over_bytes"):
        Settings(compute_offload_over_bytes=600_000)
    Settings(compute_offload=False, compute_offload_over_bytes=600_000)


# --- the node's side: fetch the body, store the result -------------------------------------


class FakeS3:
    """Presigned URLs' far side: GET answers an object, PUT stores one, ``/broken`` fails."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        store, seen = self.objects, self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _answer(self, code: int, data: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                seen.append(("GET", path))
                self._answer(200, store[path]) if path in store else self._answer(404)

            def do_POST(self) -> None:  # noqa: N802 - a stream relay whose client has gone
                self.rfile.read(int(self.headers["Content-Length"]))
                seen.append(("POST", self.path))
                self._answer(410)

            def do_PUT(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                seen.append(("PUT", path))
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if path == "/broken":
                    self._answer(403)
                    return
                store[path] = data
                self._answer(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    fake = FakeS3()
    with serving(fake.server):
        yield fake


def test_the_node_fetches_a_body_sent_by_url(s3: FakeS3) -> None:
    body = {"model": "m", "input": ["a"] * 10}
    s3.objects["/payload.json"] = json.dumps(body).encode()
    task = {"request_id": "r", "engine": {}, "body_from": {"url": f"{s3.url}/payload.json?sig=1"}}
    assert offload.fetch_body(task) == {"request_id": "r", "engine": {}, "body": body}
    inline = {"request_id": "r", "body": body}
    assert offload.fetch_body(inline) is inline


def test_a_small_result_stays_in_the_task_with_no_s3_call(s3: FakeS3) -> None:
    task = {"result_to": {"url": f"{s3.url}/out", "key": "k", "over_bytes": 1000}}
    result = {"response": {"text": "x" * 900}}
    assert offload.store_result(task, result) is result
    assert offload.store_result({}, result) is result
    assert s3.requests == []


def test_a_large_result_is_put_by_url_and_answered_with_a_pointer(s3: FakeS3) -> None:
    key = "requests/r/task-result-abc.json"
    task = {"result_to": {"url": f"{s3.url}/out?sig=1", "key": key, "over_bytes": 1000}}
    result = {"response": {"text": "x" * 2000}, "engine_time_ms": 3.0}
    pointer = offload.store_result(task, result)
    stored = s3.objects["/out"]
    assert pointer == {"result_at": {"key": key, "bytes": len(stored)}}
    assert json.loads(stored) == result


def test_a_failed_transfer_fails_the_task_without_the_urls_signature(s3: FakeS3) -> None:
    task = {"result_to": {"url": f"{s3.url}/broken?Signature=SECRET", "key": "k", "over_bytes": 1}}
    with pytest.raises(offload.PresignedUrlError, match="403") as info:
        offload.store_result(task, {"response": {}})
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
    missing = {"body_from": {"url": f"{s3.url}/gone?Signature=SECRET"}}
    with pytest.raises(offload.PresignedUrlError, match="404") as info:
        offload.fetch_body(missing)
    assert "SECRET" not in str(info.value)


def test_a_streamed_run_takes_its_body_and_leaves_its_result_by_url_too(
    s3: FakeS3, tiny_model_dir: Path
) -> None:
    """``run_task``, the one entry point of chat, completions and embeddings, streamed or not."""
    s3.objects["/body"] = json.dumps(
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    ).encode()
    task = {
        "request_id": "req_1",
        "engine": {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)},
        "body_from": {"url": f"{s3.url}/body", "bytes": 60},
        "result_to": {"url": f"{s3.url}/result", "key": "k", "over_bytes": 10},
        "stream": {
            "relay_url": f"{s3.url}/relay/push",
            "token": mint_for(b"k" * 32, "req_1", "conn-a", "ref", 60),
            "flush_ms": 0,
            "flush_tokens": 1,
        },
    }
    pointer = run_task("chat_completions", task)
    assert pointer == {"result_at": {"key": "k", "bytes": len(s3.objects["/result"])}}
    stored = json.loads(s3.objects["/result"])
    assert stored["response"]["object"] == "chat.completion" and "stream_stats" in stored
    assert ("POST", "/relay/push") in s3.requests  # it did stream
