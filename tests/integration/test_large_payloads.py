"""Large bodies and results travel by S3, on the moto server, through a real poller.

The poller runs on a boto3 session of its own whose calls are counted (``aws_calls``): a small
request must cost no S3 call at all, a large one only the calls its size needs. The executor
stands in for an HPC node: it runs the node's real transfer code (``hpc_functions.offload``)
over the presigned URLs the poller put in the task, against the moto server, around an engine
that echoes the prompt (so a large prompt makes a large result).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import boto3
import pytest

from chalicelib.compute.errors import remote_error
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from hpc_functions import offload
from tests.aws_calls import CallCounter
from tests.integration.pollers import forget_endpoints, pollers
from tests.integration.test_poller import MODEL, USER, ScriptedExecutor, response

REGISTRY = REPO_ROOT / "infra" / "deployments" / "local.json"
# Over the default threshold (256 KiB), under the API's inline limit's S3 path.
LARGE = 300 * 1024


def settings(stage: str, **overrides: Any) -> Settings:
    return Settings(
        stage=stage,
        # Fail-over here goes by the registry's priority (local-a first), not a conversation's
        # home (affinity has its own tests).
        affinity=overrides.pop("affinity", False),
        poller_visibility_timeout_s=2,
        poller_wait_time_s=1,
        wait_timeout_s=20,
        registry_path=str(REGISTRY),
        reply_queue_prefix=f"first-{stage}-reply-{uuid.uuid4().hex[:6]}",
        **overrides,
    )


class Node(ScriptedExecutor):
    """An HPC node: fetches the body by URL when sent one, echoes the prompt (``times`` over),
    stores a large result by URL. Keeps each task as it arrived."""

    def __init__(self, times: int = 1) -> None:
        self.tasks: list[dict[str, Any]] = []
        super().__init__(self._run)
        self._times = times

    def _run(self, task: dict[str, Any], n: int) -> Any:
        self.tasks.append(task)
        task = offload.fetch_body(task)
        out = response(task["request_id"])
        out["choices"][0]["message"]["content"] = task["body"]["messages"][0]["content"] * (
            self._times
        )
        return offload.store_result(task, {"response": out, "engine_time_ms": 1.0})


@pytest.fixture
def start(
    stage: str, aws_session: boto3.Session, aws_calls: CallCounter
) -> Iterator[Callable[..., tuple[Services, Services]]]:
    """``start(node, **settings)``: the API's services (uncounted) and those of a poller now
    running on ``node`` (or a node per endpoint name; counted by ``aws_calls``), both with
    ``settings``."""
    with ExitStack() as stack:

        def run(node: Node | dict[str, Node], **overrides: Any) -> tuple[Services, Services]:
            s = settings(stage, **overrides)
            api, side = Services(s), Services(s, session=aws_session)
            forget_endpoints(api)
            nodes = node if isinstance(node, dict) else {}
            start_poller = stack.enter_context(pollers(side))
            start_poller(lambda endpoint: nodes.get(endpoint.name, node))
            return api, side

        yield run


def chat(api: Services, text: str) -> tuple[str, str]:
    req = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    )
    request_id = api.gateway.submit(USER, "chat_completions", req)
    done = api.gateway.wait(request_id, 20)
    return request_id, str(done.response["choices"][0]["message"]["content"])


def s3_calls(aws_calls: CallCounter) -> dict[str, int]:
    return {k: v for k, v in aws_calls.by_operation.items() if k.startswith("s3.")}


def test_a_small_request_costs_no_s3_call(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    node = Node()
    api, _ = start(node)
    for i in range(3):
        _, content = chat(api, f"hello {i}")
        assert content == f"hello {i}"
    assert s3_calls(aws_calls) == {}
    # The task carries the body itself, and a result URL it did not need to use.
    assert all("body" in t and "body_from" not in t for t in node.tasks)
    assert all(t["result_to"]["over_bytes"] == 256 * 1024 for t in node.tasks)


def test_a_large_body_goes_by_url_and_the_poller_never_reads_it(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    node = Node()
    api, side = start(node)
    text = "x" * LARGE
    request_id, content = chat(api, text)
    assert content == text
    (task,) = node.tasks
    assert "body" not in task and task["body_from"]["bytes"] > LARGE
    assert f"/requests/{request_id}/payload.json" in task["body_from"]["url"]
    # No read of the body: one PUT of the node's result, one GET back, one PUT of the record's
    # result (over the record's inline limit), as before.
    assert s3_calls(aws_calls) == {"s3.GetObject": 1, "s3.PutObject": 1}
    record = side.requests.get(request_id)
    assert record is not None and record["result_key"] == f"requests/{request_id}/result.json"


def test_a_large_result_is_stored_by_the_node_and_read_back(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    node = Node(times=LARGE // 4)
    api, side = start(node)
    request_id, content = chat(api, "abcd")
    assert content == "abcd" * (LARGE // 4)
    (task,) = node.tasks
    key = task["result_to"]["key"]
    assert key.startswith(f"requests/{request_id}/task-result-")
    assert api.blobs.get_json(key)["response"]["choices"][0]["message"]["content"] == content
    assert s3_calls(aws_calls) == {"s3.GetObject": 1, "s3.PutObject": 1}


def test_a_body_held_in_the_record_over_the_threshold_is_put_in_s3_first(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    """An inline limit set above the threshold: the poller stores the body and sends its URL."""
    node = Node(times=0)  # a small answer: the record holds the body already
    api, _ = start(node, inline_limit_bytes=350 * 1024)
    request_id, content = chat(api, "y" * LARGE)
    assert content == ""
    (task,) = node.tasks
    assert "body" not in task and f"/requests/{request_id}/payload.json" in task["body_from"]["url"]
    assert s3_calls(aws_calls) == {"s3.PutObject": 1}  # the body's, nothing else


def test_with_the_s3_path_off_everything_travels_inline_as_before(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    node = Node()
    api, _ = start(node, compute_offload=False)
    text = "z" * LARGE
    _, content = chat(api, text)
    assert content == text
    (task,) = node.tasks
    assert task["body"]["messages"][0]["content"] == text and "result_to" not in task
    # The body read from S3 into the task; the result written to S3 for the record.
    assert s3_calls(aws_calls) == {"s3.GetObject": 1, "s3.PutObject": 1}


def test_a_record_without_the_bodys_size_is_measured_then_sent_by_url(
    start: Callable[..., tuple[Services, Services]], aws_calls: CallCounter
) -> None:
    """A record written before sizes were kept (``payload_key`` alone): read once, then handed
    over by the same key (no second copy). A missing object fails here, in the poller, as
    before (retried, then the DLQ)."""
    node = Node(times=0)
    api, side = start(node)
    request_id = f"req_{uuid.uuid4().hex}"
    key = f"requests/{request_id}/payload.json"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "w" * LARGE}]}
    api.blobs.put_json(key, body)
    api.requests.create(
        {
            "request_id": request_id,
            "owner": USER.id,
            "model": MODEL,
            "function": "chat_completions",
            "payload_key": key,
        }
    )
    api.interactive_queue.send({"request_id": request_id})
    deadline = time.monotonic() + 20
    while (record := side.requests.get(request_id)) is None or record["status"] != "completed":
        assert time.monotonic() < deadline, "the request never completed"
        time.sleep(0.05)
    (task,) = node.tasks
    assert "body" not in task and f"/{key}" in task["body_from"]["url"]
    assert s3_calls(aws_calls) == {"s3.GetObject": 1}


def test_a_node_that_cannot_reach_s3_fails_the_endpoint_not_the_request(
    start: Callable[..., tuple[Services, Services]],
) -> None:
    """The node's transfer failing is its endpoint's failure: the request runs elsewhere."""

    class Cut(Node):
        def _run(self, task: dict[str, Any], n: int) -> Any:
            self.tasks.append(task)
            raise remote_error(
                "Traceback (most recent call last):\n  ...\nhpc_functions.offload."
                "PresignedUrlError: could not fetch the request body: connection refused"
            )

    nodes = {"local-a": Cut(), "local-b": Node()}
    api, side = start(nodes)
    request_id, content = chat(api, "v" * LARGE)
    assert content == "v" * LARGE
    assert len(nodes["local-a"].tasks) == 1 and len(nodes["local-b"].tasks) == 1
    record = side.requests.get(request_id)
    assert record is not None and record["endpoint"] == "local-b" and record["attempt"] == 1
