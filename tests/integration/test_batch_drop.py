"""The S3 drop folder on the moto server, with real notifications and the real worker: the batch
object in ``outbox/<owner>/NAME.status.json`` from the start (validating) and while shards run;
an object over the configured size fails with ``file_too_large`` on the line where it passed it.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from chalicelib.services import Services
from chalicelib.settings import Settings
from chalicelib.stores.objects import ObjectStore
from tests.integration.test_batch import (  # noqa: F401 - fixtures
    InProcessEndpoint,
    batch_services,
    lines,
    registry_path,
    running_worker,
    until,
)


class RecordingStore(ObjectStore):
    """The drop bucket's adapter, keeping every status.json it writes (S3 keeps only the last)."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.statuses: list[dict[str, Any]] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/jsonl") -> None:
        super().put_bytes(key, data, content_type)
        if key.endswith(".status.json"):
            self.statuses.append(json.loads(data))


def status(services: Services, owner: str, name: str) -> dict[str, Any] | None:
    s3 = services.s3
    key = f"outbox/{owner}/{name}.status.json"
    try:
        obj = s3.get_object(Bucket=services.settings.drop_bucket_name, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    return dict(json.loads(obj["Body"].read()))


def test_status_json_shows_the_batch_from_validating_and_its_progress_while_it_runs(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    owner = f"drop-{uuid.uuid4().hex[:6]}"
    release = threading.Event()

    def hold_shard_1(task: dict[str, Any]) -> None:
        if task["shard"] == 1:
            assert release.wait(60), "the test never released shard 1"

    endpoint = InProcessEndpoint(before=hold_shard_1)
    drop = RecordingStore(s.s3, s.settings.drop_bucket_name)
    with running_worker(s, lambda e: endpoint, drop=drop):
        try:
            s.s3.put_object(
                Bucket=s.settings.drop_bucket_name, Key=f"inbox/{owner}/run.jsonl", Body=lines(6)
            )

            # Shard 0 done, shard 1 held: the batch is running and the outbox shows how far.
            def midway() -> dict[str, Any] | None:
                current = status(s, owner, "run")
                done = current and current["request_counts"]["completed"] == 3
                return current if done else None

            running = until(midway)
        finally:
            release.set()
        assert running["status"] == "in_progress" and running["in_progress_at"]
        assert running["request_counts"] == {"total": 6, "completed": 3, "failed": 0}
        assert running["output_file_id"] is None
        finished = until(lambda: (status(s, owner, "run") or {}).get("status") == "completed")
        assert finished
    published = drop.statuses
    assert published[0]["status"] == "validating"
    assert published[0]["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert published[1]["status"] == "in_progress"
    assert published[1]["request_counts"] == {"total": 6, "completed": 0, "failed": 0}
    assert published[-1]["status"] == "completed"
    assert published[-1]["request_counts"] == {"total": 6, "completed": 6, "failed": 0}


def test_a_dropped_file_over_the_size_limit_fails_with_file_too_large(
    stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    limit = 300
    s = Services(
        Settings(
            stage=stage,
            registry_path=str(registry_path),
            batch_max_file_bytes=limit,
            batch_visibility_timeout_s=5,
            poller_wait_time_s=1,
        )
    )
    owner = f"drop-{uuid.uuid4().hex[:6]}"
    data = lines(4)
    assert len(data) > limit
    sizes = [len(x) + 1 for x in data.splitlines()]
    over = next(i for i in range(len(sizes)) if sum(sizes[: i + 1]) > limit) + 1
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint):
        s.s3.put_object(
            Bucket=s.settings.drop_bucket_name, Key=f"inbox/{owner}/big.jsonl", Body=data
        )
        failed = until(lambda: (status(s, owner, "big") or {}).get("status") == "failed" or None)
        assert failed
        final = status(s, owner, "big")
    assert final is not None
    assert final["errors"]["data"] == [
        {
            "code": "file_too_large",
            "line": over,
            "message": f"The file is larger than {limit} bytes.",
            "param": None,
        }
    ]
    assert final["request_counts"]["completed"] == 0 and not endpoint.runs
