"""Batch on the moto server: the Files/Batches API's work, the batch worker, the drop folder with
real S3 notifications, and the shard counters. The HPC side is the real ``batch_shard`` function
with the real transformers engine on the tiny model, run in process behind the executor seam;
shards travel by presigned URLs to the moto server, as they would to S3.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib.auth import Principal
from chalicelib.batch.worker import BatchWorker
from chalicelib.compute.executors import ExecutorPool
from chalicelib.logs import get_logger
from chalicelib.registry import Endpoint
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.objects import ObjectStore

MODEL = "first/tiny-chat"


Hook = Callable[[dict[str, Any]], None]


class InProcessEndpoint:
    """Runs the registered HPC functions in this process; counts runs per task id and keeps
    each task. ``before(task)`` runs ahead of the function and ``after(task)`` once it has
    returned (its lines uploaded): either may block, or raise to lose the task as a crashed
    endpoint would."""

    def __init__(self, before: Hook | None = None, after: Hook | None = None) -> None:
        self.runs: Counter[str] = Counter()
        self.tasks: list[dict[str, Any]] = []
        self._before, self._after = before, after
        self._pool = ThreadPoolExecutor(2)

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        from hpc_functions import FUNCTIONS

        task = (args or ({},))[0]
        self.runs[task["request_id"]] += 1
        self.tasks.append(task)
        return self._pool.submit(self._run, FUNCTIONS[function_id.split(":", 1)[1]], task)

    def _run(self, function: Callable[[dict[str, Any]], Any], task: dict[str, Any]) -> Any:
        if self._before is not None:
            self._before(task)
        result = function(task)
        if self._after is not None:
            self._after(task)
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@pytest.fixture(scope="module")
def registry_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpc_functions.build_tiny_model import build

    # One model directory per session, whichever module asks first: one engine config, so the
    # in-process engines load it once (two loads at once in one process race in transformers).
    base = tmp_path_factory.getbasetemp() / "batch-shared"
    path = base / "local.json"
    if not path.exists():
        model = build(base / "tiny-chat")
        data = json.loads((REPO_ROOT / "infra" / "deployments" / "local.json").read_text())
        # Every cluster's tiny-chat: shards may run on either (local-b when local-a is full).
        for endpoint in data["endpoints"]:
            for deployment in endpoint["models"]:
                if deployment["model"] == MODEL:
                    deployment["engine"]["path"] = str(model)
        path.write_text(json.dumps(data))
    return path


def batch_services_for(stage: str, registry_path: Path, **settings: Any) -> Services:
    """Services for batch worker tests: small shards, short waits; ``settings`` override."""
    defaults: dict[str, Any] = {
        "batch_shard_lines": 3,
        "batch_max_inflight_shards": 2,
        "batch_rows_per_pass": 2,
        "batch_visibility_timeout_s": 5,
        "poller_wait_time_s": 1,
    }
    return Services(
        Settings(stage=stage, registry_path=str(registry_path), **{**defaults, **settings})
    )


@pytest.fixture
def batch_services(stage: str, registry_path: Path) -> Services:
    return batch_services_for(stage, registry_path)


@pytest.fixture
def endpoint() -> InProcessEndpoint:
    return InProcessEndpoint()


@contextmanager
def running_worker(
    s: Services,
    executor_for: Callable[[Endpoint], Any],
    drop: ObjectStore | None = None,
    **options: Any,
) -> Iterator[BatchWorker]:
    """A batch worker on ``s`` in a thread, its tasks sent to ``executor_for(endpoint)``."""
    w = BatchWorker(
        settings=s.settings,
        registry=s.registry,
        queue=s.batch_queue,
        batches=s.batch_store,
        files=s.file_store,
        data=s.objects,
        drop=drop or s.drop_objects,
        keys=s.keys,
        executors=ExecutorPool(executor_for),
        logger=get_logger("first-batch-test"),
        **options,
    )
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        yield w
    finally:
        w.stopping.set()
        thread.join(timeout=30)


@pytest.fixture
def worker(batch_services: Services, endpoint: InProcessEndpoint) -> Iterator[BatchWorker]:
    with running_worker(batch_services, lambda e: endpoint) as w:
        yield w


def lines(n: int, **body: Any) -> bytes:
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Say {i}"}],
                "max_tokens": 2,
                **body,
            },
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def upload(services: Services, user: Principal, data: bytes) -> str:
    req = requests.Request(
        "POST", "http://x/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
    ).prepare()
    body = req.body if isinstance(req.body, bytes) else b""
    return str(services.batch_api.upload(user, req.headers["Content-Type"], body)["id"])


def drop_user(services: Services, name: str, **key: Any) -> str:
    """``name`` as a drop-folder owner: a user with an active API key (``key``: its groups,
    domain, kind)."""
    services.keys.create(name, **key)
    return name


def until(check: Callable[[], Any], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def final(services: Services, user: Principal, batch_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        b = services.batch_api.get_batch(user, batch_id)
        return b if b["status"] in ("completed", "failed", "cancelled", "expired") else None

    return dict(until(done))


def test_drop_bucket_notifies_the_batch_queue(batch_services: Services) -> None:
    s = batch_services.settings
    config = batch_services.s3.get_bucket_notification_configuration(Bucket=s.drop_bucket_name)
    (queue,) = config["QueueConfigurations"]
    assert queue["QueueArn"].endswith(f":{s.batch_queue_name}")
    rules = {r["Name"].lower(): r["Value"] for r in queue["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "inbox/", "suffix": ".jsonl"}


def test_a_batch_runs_in_shards_and_keeps_input_order(
    batch_services: Services, worker: BatchWorker, endpoint: InProcessEndpoint
) -> None:
    user = Principal(id="batch-alice", username="batch-alice")
    api = batch_services.batch_api
    file_id = upload(batch_services, user, lines(7))
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = api.create_batch(user, json.dumps(body).encode())
    assert created["status"] == "validating"
    done = final(batch_services, user, created["id"])
    assert done["status"] == "completed", done
    errors = done["error_file_id"] and api.file_content(user, done["error_file_id"]).data
    assert done["request_counts"] == {"total": 7, "completed": 7, "failed": 0}, errors
    assert done["model"] == MODEL and done["error_file_id"] is None
    assert all(done[f"{s}_at"] for s in ("in_progress", "finalizing", "completed"))
    content = api.file_content(user, done["output_file_id"]).data or b""
    out = [json.loads(line) for line in content.splitlines()]
    assert [o["custom_id"] for o in out] == [f"line-{i}" for i in range(7)]
    assert out[0]["response"]["body"]["object"] == "chat.completion"
    # 7 lines in shards of 3: three tasks, each run once, each with the rows-per-pass setting.
    assert sorted(endpoint.runs.values()) == [1, 1, 1]
    assert {t["max_rows"] for t in endpoint.tasks} == {batch_services.settings.batch_rows_per_pass}
    listed = api.list_batches(user, {"limit": "1"})
    assert listed["data"][0]["id"] == created["id"] and listed["object"] == "list"


def test_validation_failures_name_their_lines(
    batch_services: Services, worker: BatchWorker
) -> None:
    user = Principal(id="batch-bob", username="batch-bob")
    good = lines(2).splitlines()
    bad = [
        good[0],
        b"{not json",
        good[0],  # duplicate custom_id
        json.dumps({"custom_id": "x", "url": "/v1/embeddings", "body": {"model": MODEL}}).encode(),
        json.dumps(
            {"custom_id": "y", "url": "/v1/chat/completions", "body": {"model": "other"}}
        ).encode(),
        json.dumps({"url": "/v1/chat/completions", "body": {"model": MODEL}}).encode(),
    ]
    file_id = upload(batch_services, user, b"\n".join(bad) + b"\n")
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = batch_services.batch_api.create_batch(user, json.dumps(body).encode())
    done = final(batch_services, user, created["id"])
    assert done["status"] == "failed" and done["failed_at"]
    errors = {(e["line"], e["code"]) for e in done["errors"]["data"]}
    assert errors == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "mismatched_endpoint"),
        (5, "mismatched_model"),
        (6, "missing_custom_id"),
    }


def test_the_drop_folder_starts_one_batch_per_object_version(
    batch_services: Services, worker: BatchWorker
) -> None:
    s3, s = batch_services.s3, batch_services.settings
    bucket = s.drop_bucket_name
    data = lines(4)
    drop_user(batch_services, "carol")
    s3.put_object(Bucket=bucket, Key="inbox/carol/night run.jsonl", Body=data)
    status_key = "outbox/carol/night run.status.json"

    def finished() -> dict[str, Any] | None:
        try:
            obj = s3.get_object(Bucket=bucket, Key=status_key)
        except s3.exceptions.NoSuchKey:
            return None
        status = json.loads(obj["Body"].read())
        return status if status["status"] == "completed" else None

    status = until(finished)
    assert status["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    out = s3.get_object(Bucket=bucket, Key="outbox/carol/night run.output.jsonl")["Body"].read()
    assert [json.loads(x)["custom_id"] for x in out.splitlines()] == [f"line-{i}" for i in range(4)]
    errors = s3.get_object(Bucket=bucket, Key="outbox/carol/night run.errors.jsonl")
    assert errors["Body"].read() == b""
    carol = Principal(id="carol", username="carol")
    # The same bytes written again, and the first event delivered again: no second batch.
    s3.put_object(Bucket=bucket, Key="inbox/carol/night run.jsonl", Body=data)
    queue = batch_services.batch_queue
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {
                        "key": "inbox/carol/night+run.jsonl",
                        "eTag": s3.head_object(Bucket=bucket, Key="inbox/carol/night run.jsonl")[
                            "ETag"
                        ],
                        "sequencer": "0",
                    },
                },
            }
        ]
    }
    queue.client.send_message(QueueUrl=queue.url, MessageBody=json.dumps(event))
    # A new version (new content) does start one.
    s3.put_object(Bucket=bucket, Key="inbox/carol/night run.jsonl", Body=lines(2))

    def two() -> list[dict[str, Any]] | None:
        listed = batch_services.batch_api.list_batches(carol, {})["data"]
        if len(listed) == 2 and all(b["status"] == "completed" for b in listed):
            return list(listed)
        return None

    both = until(two)
    assert sorted(b["request_counts"]["total"] for b in both) == [2, 4]
    # Nothing more arrives: the duplicates were consumed without a third batch.
    until(lambda: worker.counts["drop_duplicates"] >= 2)
    assert len(batch_services.batch_api.list_batches(carol, {})["data"]) == 2


def test_a_shard_reported_twice_is_counted_once(batch_services: Services) -> None:
    store = batch_services.batch_store
    store.create({"owner": "dave", "batch_id": "batch_x", "endpoint": "/v1/completions"})
    store.transition("dave", "batch_x", "in_progress", ("validating",))
    assert store.record_shard("dave", "batch_x", 0, 3, 1) is not None
    assert store.record_shard("dave", "batch_x", 0, 3, 1) is None
    item = store.record_shard("dave", "batch_x", 1, 2, 0)
    assert item is not None
    assert (item["completed_count"], item["failed_count"]) == (5, 1)
    assert sorted(item["done_shards"]) == [0, 1]


def test_shards_go_only_to_endpoints_the_router_finds_usable(batch_services: Services) -> None:
    # local-b has no heartbeat (offline): with two shards in flight, its own spare capacity would
    # have drawn one of them; the shared status keeps every shard on local-a.
    s = batch_services
    s.endpoint_store.heartbeat("local-a", capacity=4, models={MODEL: "hot"})
    by_name = {"local-a": InProcessEndpoint(), "local-b": InProcessEndpoint()}
    with running_worker(
        s, lambda e: by_name[e.name], endpoints=s.endpoint_store, policy=s.circuit_policy
    ):
        user = Principal(id="batch-router", username="batch-router")
        body = {
            "input_file_id": upload(s, user, lines(9)),
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        created = s.batch_api.create_batch(user, json.dumps(body).encode())
        done = final(s, user, created["id"])
    assert done["request_counts"] == {"total": 9, "completed": 9, "failed": 0}
    assert sorted(by_name["local-a"].runs.values()) == [1, 1, 1]
    assert not by_name["local-b"].runs
    placed = s.batch_store.get(user.id, created["id"])
    assert placed is not None
    assert placed["shard_endpoints"] == {str(n): ["local-a", 1] for n in range(3)}
