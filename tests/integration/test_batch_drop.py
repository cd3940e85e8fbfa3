"""The S3 drop folder on the moto server, with real notifications and the real worker: the batch
object in ``outbox/<owner>/NAME.status.json`` from the start (validating) and while shards run;
an object over the configured size fails with ``file_too_large`` on the line where it passed it.

A rewritten inbox file: the newest version owns the outbox, whether the old batch is running,
writing its output, not yet read, or its event arrives last. The owner: a user with an active
API key, acting with that key's groups; anyone else's file fails with ``unknown_owner``.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from chalicelib.auth import Principal
from chalicelib.batch.drop import drop_objects
from chalicelib.services import Services
from chalicelib.settings import Settings
from chalicelib.stores.keys import hash_key
from chalicelib.stores.objects import ObjectStore
from tests.integration.test_batch import (  # noqa: F401 - fixtures
    MODEL,
    InProcessEndpoint,
    batch_services,
    batch_services_for,
    drop_user,
    lines,
    registry_path,
    running_worker,
    until,
)

TERMINAL = ("completed", "failed", "cancelled", "expired")


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
    owner = drop_user(s, f"drop-{uuid.uuid4().hex[:6]}")
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
    owner = drop_user(s, f"drop-{uuid.uuid4().hex[:6]}")
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


# ----- a rewritten inbox file: the newest version owns the outbox -------------------------------


def batches_of(services: Services, owner: str) -> dict[str, dict[str, Any]]:
    """The owner's batches by id, as the Batches API shows them (drop batches included)."""
    listed = services.batch_api.list_batches(Principal(id=owner, username=owner), {})
    return {b["id"]: b for b in listed["data"]}


def record_of(services: Services, owner: str, batch_id: str) -> dict[str, Any]:
    record = services.batch_store.get(owner, batch_id)
    assert record is not None
    return record


def outbox(services: Services, owner: str, name: str, suffix: str) -> bytes:
    key = f"outbox/{owner}/{name}.{suffix}"
    obj = services.s3.get_object(Bucket=services.settings.drop_bucket_name, Key=key)
    return bytes(obj["Body"].read())


def published(services: Services, owner: str, name: str, batch_id: str) -> dict[str, Any]:
    """``NAME.status.json`` once it shows ``batch_id`` final (the worker writes it just after
    the batch's record turns final)."""

    def final() -> dict[str, Any] | None:
        status = json.loads(outbox(services, owner, name, "status.json"))
        return status if status["id"] == batch_id and status["status"] in TERMINAL else None

    return dict(until(final))


def all_final(services: Services, owner: str, count: int) -> dict[str, dict[str, Any]] | None:
    found = batches_of(services, owner)
    done = len(found) == count and all(b["status"] in TERMINAL for b in found.values())
    return found if done else None


def test_a_rewrite_while_the_first_batch_runs_leaves_the_outbox_to_the_newer_version(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    owner = drop_user(s, f"rewrite-{uuid.uuid4().hex[:6]}")
    key = f"inbox/{owner}/run.jsonl"
    release = threading.Event()
    held: list[str] = []

    def hold_the_first_batch(task: dict[str, Any]) -> None:
        held.append(held[0] if held else task["batch_id"])
        if task["batch_id"] == held[0]:
            assert release.wait(60), "the test never released the first batch"

    endpoint = InProcessEndpoint(before=hold_the_first_batch)
    with running_worker(s, lambda e: endpoint):
        try:
            s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(3))
            until(lambda: held)
            # The file is rewritten while its first batch runs: the 2-line batch finishes first.
            s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(2))
            newer = until(
                lambda: next(
                    (b for b in batches_of(s, owner).values() if b["status"] == "completed"),
                    None,
                )
            )
            assert newer["request_counts"]["total"] == 2
        finally:
            release.set()
        batches = until(lambda: all_final(s, owner, 2))
    older = record_of(s, owner, held[0])
    assert older["status"] == "cancelled" and older["superseded_by"] == newer["id"]
    status = published(s, owner, "run", newer["id"])
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    out = outbox(s, owner, "run", "output.jsonl").splitlines()
    assert [json.loads(x)["custom_id"] for x in out] == ["line-0", "line-1"]
    assert set(batches) == {newer["id"], held[0]}


class SlowOutputStore(ObjectStore):
    """The drop bucket's adapter, holding the first output upload (a large output file still
    on its way to S3) until ``release`` is set."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.uploading = threading.Event()
        self.release = threading.Event()

    def upload_file(self, path: Path, key: str, content_type: str = "application/jsonl") -> None:
        if key.endswith(".output.jsonl") and not self.uploading.is_set():
            self.uploading.set()
            assert self.release.wait(60), "the test never released the upload"
        super().upload_file(path, key, content_type)


def test_an_output_still_uploading_when_the_file_is_rewritten_never_lands_over_the_newer_one(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    owner = drop_user(s, f"slow-{uuid.uuid4().hex[:6]}")
    key = f"inbox/{owner}/run.jsonl"
    drop = SlowOutputStore(s.s3, s.settings.drop_bucket_name)
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint, drop=drop, progress_wait_s=0.2):
        try:
            s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(3))
            assert drop.uploading.wait(60)
            (first,) = batches_of(s, owner)
            # Rewritten while the first batch's output is on its way: the newer batch runs to
            # finalizing, its own output waiting for that upload to end.
            s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(2))
            until(
                lambda: any(
                    b["status"] == "finalizing" and b["id"] != first
                    for b in batches_of(s, owner).values()
                )
            )
        finally:
            drop.release.set()
        batches = until(lambda: all_final(s, owner, 2))
        (newer,) = set(batches) - {first}
        status = published(s, owner, "run", newer)
    assert status["status"] == "completed" and status["request_counts"]["total"] == 2
    out = outbox(s, owner, "run", "output.jsonl").splitlines()
    assert [json.loads(x)["custom_id"] for x in out] == ["line-0", "line-1"]


def captured_events(services: Services, key: str, count: int) -> list[str]:
    """Take the batch queue's next ``count`` events for ``key`` off the queue (no worker runs):
    their bodies, in the order S3 wrote them, to be delivered again in any order."""
    queue = services.batch_queue
    found: list[str] = []
    while len(found) < count:
        messages = queue.receive(10, 1, 30)
        assert messages, f"{len(found)} of {count} events for {key} arrived"
        for message in messages:
            queue.client.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
            body = json.loads(message["Body"])
            if any(o.key == key for o in drop_objects(body)):
                found.append(message["Body"])
    return found


def deliver(services: Services, body: str) -> None:
    queue = services.batch_queue
    queue.client.send_message(QueueUrl=queue.url, MessageBody=body)


def test_s3_events_on_the_embedded_endpoint_carry_sequencers_in_the_order_of_the_writes(
    own_stage: str,
) -> None:
    s = Services(Settings(stage=own_stage))
    key = "inbox/nobody/seq.jsonl"
    written = [
        s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(n + 1))[
            "ETag"
        ].strip('"')
        for n in range(3)
    ]
    events = [drop_objects(json.loads(b))[0] for b in captured_events(s, key, 3)]
    assert all(len(e.sequencer) == 16 and int(e.sequencer, 16) for e in events)
    assert [e.etag for e in sorted(events, key=lambda e: e.sequencer)] == written


def test_a_rewrite_before_the_first_batch_reads_its_file_runs_the_new_content_once(
    own_stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    # No versions in the drop bucket: the first event's batch, reading the key after the
    # rewrite, would get the new bytes, and the new bytes' own batch runs them again.
    s = batch_services_for(own_stage, registry_path)
    owner = drop_user(s, "rewriter")
    key = f"inbox/{owner}/run.jsonl"
    for n in (3, 2):
        s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(n))
    first_event, second_event = captured_events(s, key, 2)
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint):
        deliver(s, first_event)
        (first,) = until(lambda: all_final(s, owner, 1)).values()
        deliver(s, second_event)
        batches = until(lambda: all_final(s, owner, 2))
    (second,) = (b for b in batches.values() if b["id"] != first["id"])
    assert first["status"] == "failed" and first["request_counts"]["total"] == 0
    assert [e["code"] for e in first["errors"]["data"]] == ["input_file_changed"]
    assert second["status"] == "completed" and second["request_counts"]["total"] == 2
    assert {t["batch_id"] for t in endpoint.tasks} == {second["id"]}
    assert published(s, owner, "run", second["id"])["status"] == "completed"


def test_an_older_version_whose_event_arrives_last_is_cancelled_and_publishes_nothing(
    own_stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services_for(own_stage, registry_path)
    owner = drop_user(s, "late")
    key = f"inbox/{owner}/run.jsonl"
    for n in (3, 2):
        s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(n))
    older_event, newer_event = captured_events(s, key, 2)
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint):
        deliver(s, newer_event)
        (newer,) = until(lambda: all_final(s, owner, 1)).values()
        published(s, owner, "run", newer["id"])
        before = outbox(s, owner, "run", "status.json")
        deliver(s, older_event)
        batches = until(lambda: all_final(s, owner, 2))
    (older,) = (b for b in batches.values() if b["id"] != newer["id"])
    assert newer["status"] == "completed" and older["status"] == "cancelled"
    assert record_of(s, owner, older["id"])["superseded_by"] == newer["id"]
    assert {t["batch_id"] for t in endpoint.tasks} == {newer["id"]}
    assert outbox(s, owner, "run", "status.json") == before


def test_a_burst_of_rewrites_leaves_the_last_versions_results_in_the_outbox(
    own_stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services_for(own_stage, registry_path)
    owner = drop_user(s, "burst")
    key = f"inbox/{owner}/run.jsonl"
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint, progress_wait_s=0.5):
        # Each write lands while the batches of the ones before are starting, validating or
        # running (no sleeps: the worker takes up to four events at once).
        for n in range(1, 5):
            s.s3.put_object(Bucket=s.settings.drop_bucket_name, Key=key, Body=lines(n))
        batches = until(lambda: all_final(s, owner, 4))
    # An older version may have finished before the next write arrived; the last one did.
    (last,) = (b for b in batches.values() if b["request_counts"]["total"] == 4)
    assert last["status"] == "completed"
    assert published(s, owner, "run", last["id"])["status"] == "completed"
    assert len(outbox(s, owner, "run", "output.jsonl").splitlines()) == 4


# ----- the owner: a user the gateway knows -----------------------------------------------------


def test_a_drop_file_of_an_unknown_or_revoked_owner_fails_with_unknown_owner_and_runs_nothing(
    batch_services: Services,  # noqa: F811 - the fixture imported above
) -> None:
    s = batch_services
    unknown = f"nosuchuser-{uuid.uuid4().hex[:6]}"
    revoked = f"revoked-{uuid.uuid4().hex[:6]}"
    s.keys.revoke(hash_key(s.keys.create(revoked)))
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint):
        for owner in (unknown, revoked):
            s.s3.put_object(
                Bucket=s.settings.drop_bucket_name, Key=f"inbox/{owner}/x.jsonl", Body=lines(2)
            )
        for owner in (unknown, revoked):
            done = until(
                lambda owner=owner: (status(s, owner, "x") or {}).get("status") in TERMINAL
            )
            assert done
            final = json.loads(outbox(s, owner, "x", "status.json"))
            assert final["status"] == "failed", final
            (error,) = final["errors"]["data"]
            assert error["code"] == "unknown_owner" and owner in error["message"]
            assert final["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert endpoint.tasks == []


@pytest.fixture
def group_only_registry(
    tmp_path: Path,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> Path:
    """The batch tests' registry with the tiny model open to the group ``drop-lab`` only."""
    data = json.loads(registry_path.read_text())
    for endpoint in data["endpoints"]:
        for deployment in endpoint["models"]:
            if deployment["model"] == MODEL:
                deployment["access"] = {"groups": ["drop-lab"]}
    path = tmp_path / "group-only.json"
    path.write_text(json.dumps(data))
    return path


def test_a_drop_batch_runs_with_its_owners_groups_as_rest_would(
    stage: str, group_only_registry: Path
) -> None:
    s = batch_services_for(stage, group_only_registry)
    member = drop_user(s, f"lab-{uuid.uuid4().hex[:6]}", groups=["drop-lab"], domain="lab.org")
    outsider = drop_user(s, f"out-{uuid.uuid4().hex[:6]}", groups=["other"])
    endpoint = InProcessEndpoint()
    with running_worker(s, lambda e: endpoint):
        for owner in (member, outsider):
            s.s3.put_object(
                Bucket=s.settings.drop_bucket_name, Key=f"inbox/{owner}/q.jsonl", Body=lines(2)
            )
        (ran,) = until(lambda: all_final(s, member, 1)).values()
        (refused,) = until(lambda: all_final(s, outsider, 1)).values()
    assert ran["status"] == "completed", ran
    assert record_of(s, member, ran["id"])["principal"] == {
        "id": member,
        "username": member,
        "kind": "user",
        "idp_domain": "lab.org",
        "groups": ["drop-lab"],
    }
    assert refused["status"] == "failed"
    assert {e["code"] for e in refused["errors"]["data"]} == {"model_not_found"}
