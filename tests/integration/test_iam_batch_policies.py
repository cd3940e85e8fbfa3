"""The production IAM policies allow every AWS call batch makes: the API's Files and Batches
routes (``.chalice/policy-prod.json``) and the batch worker (``infra/iam/batch-worker-policy.json``),
each recorded on its own boto3 session against the moto server through the real components
(``BatchApi``; a real ``BatchWorker`` whose executor runs the real ``batch_shard`` function),
for an API batch and a drop-folder batch; and the drop-folder user's policy
(``infra/iam/drop-folder-user-policy.json``) on a user's own calls: their own prefixes allowed,
another user's refused. The worker is wired as ``chalicelib.batch.main``
builds it: routing on the shared endpoint status, one usage record per shard through the
background ``UsageWriter``. The method is ``test_iam_policies``'s.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import requests

from chalicelib.auth import Principal
from chalicelib.batch.accounting import BatchAccounting
from chalicelib.batch.worker import BatchWorker
from chalicelib.compute.executors import ExecutorPool
from chalicelib.logs import get_logger
from chalicelib.metrics import MetricsRecorder
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from tests.iam import CallRecorder, allows
from tests.integration.test_batch import InProcessEndpoint, lines, registry_path  # noqa: F401 - fixture
from tests.integration.test_iam_policies import (
    API_POLICY,
    covers,
    denied,
    exercised,
    recording_side,
)

WORKER_POLICY = REPO_ROOT / "infra" / "iam" / "batch-worker-policy.json"
DROP_USER_POLICY = REPO_ROOT / "infra" / "iam" / "drop-folder-user-policy.json"
API_MUST_EXERCISE = {
    ("dynamodb:PutItem", "table/first-prod-files"),
    ("dynamodb:GetItem", "table/first-prod-files"),
    ("dynamodb:Query", "table/first-prod-files"),
    ("dynamodb:DeleteItem", "table/first-prod-files"),
    ("dynamodb:PutItem", "table/first-prod-batches"),
    ("dynamodb:GetItem", "table/first-prod-batches"),
    ("dynamodb:Query", "table/first-prod-batches"),
    ("dynamodb:UpdateItem", "table/first-prod-batches"),
    ("sqs:SendMessage", ":first-prod-batch"),
    ("s3:PutObject", "first-prod-data/files/"),
    ("s3:GetObject", "first-prod-data/files/"),
    ("s3:DeleteObject", "first-prod-data/files/"),
    ("s3:GetObject", "first-prod-data/batches/"),
}
WORKER_MUST_EXERCISE = {
    ("sqs:ReceiveMessage", ":first-prod-batch"),
    ("sqs:DeleteMessage", ":first-prod-batch"),
    ("dynamodb:UpdateItem", "table/first-prod-batches"),
    ("dynamodb:PutItem", "table/first-prod-batches"),
    ("dynamodb:PutItem", "table/first-prod-files"),
    ("s3:GetObject", "first-prod-data/files/"),
    ("s3:PutObject", "first-prod-data/batches/"),
    ("s3:GetObject", "first-prod-data/batches/"),
    ("s3:GetObject", "first-prod-drop/inbox/"),
    ("s3:PutObject", "first-prod-drop/outbox/"),
    ("dynamodb:Query", "table/first-prod-keys/index/by-user"),
    ("dynamodb:Scan", "table/first-prod-endpoints"),
    ("dynamodb:BatchWriteItem", "table/first-prod-usage"),
}


def test_batch_policies_allow_every_call_each_side_makes(
    stage: str,
    registry_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    settings = Settings(
        stage=stage,
        registry_path=str(registry_path),
        batch_shard_lines=2,
        batch_visibility_timeout_s=5,
        poller_wait_time_s=1,
    )
    api, worker_side = recording_side(settings), recording_side(settings)
    ws = worker_side.services
    # The pollers' heartbeats (not the worker's calls): both endpoints online, the model hot.
    operator = Services(settings)
    for endpoint in operator.registry.endpoints:
        models = {m.model: "hot" for m in endpoint.models}
        operator.endpoint_store.heartbeat(endpoint.name, capacity=4, models=models)
    recorder = MetricsRecorder("first-batch", sink=lambda line: None)
    logger = get_logger("first-batch-iam")
    accounting = BatchAccounting(recorder, logger, ws.usage_writer(recorder))
    worker = BatchWorker(
        settings=settings,
        registry=ws.registry,
        queue=ws.batch_queue,
        batches=ws.batch_store,
        files=ws.file_store,
        data=ws.objects,
        drop=ws.drop_objects,
        keys=ws.keys,
        executors=ExecutorPool(lambda e: InProcessEndpoint()),
        logger=logger,
        endpoints=ws.endpoint_store,
        policy=ws.circuit_policy,
        accounting=accounting,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        user = Principal(id="iam-batch", username="iam-batch")
        batch_api = api.services.batch_api
        req = requests.Request(
            "POST", "http://x", files={"file": ("a.jsonl", lines(3))}, data={"purpose": "batch"}
        ).prepare()
        body = req.body if isinstance(req.body, bytes) else b""
        file_id = batch_api.upload(user, req.headers["Content-Type"], body)["id"]
        create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        batch = batch_api.create_batch(
            user, json.dumps({**create, "completion_window": "24h"}).encode()
        )
        # The drop folder's owner is a user with a key (made by an operator, not the worker).
        operator.keys.create("iam-batch")
        # A user's write (drop-folder-user-policy.json), not the worker's: its own client.
        boto3.client("s3", region_name="us-east-1").put_object(
            Bucket=settings.drop_bucket_name, Key="inbox/iam-batch/d.jsonl", Body=lines(2)
        )
        deadline = time.monotonic() + 60
        while (
            batch_api.get_batch(user, batch["id"])["status"] != "completed"
            or len(batch_api.list_batches(user, {})["data"]) < 2
            or any(b["status"] != "completed" for b in batch_api.list_batches(user, {})["data"])
        ):
            assert time.monotonic() < deadline, "batches did not complete"
            time.sleep(0.1)
        done = batch_api.get_batch(user, batch["id"])
        assert batch_api.file_content(user, done["output_file_id"]).data
        batch_api.list_files(user, {})
        later = batch_api.create_batch(
            user, json.dumps({**create, "completion_window": "24h"}).encode()
        )
        batch_api.cancel_batch(user, later["id"])
        assert batch_api.file_content(user, file_id).data == lines(3)
        batch_api.delete_file(user, file_id)
    finally:
        worker.stopping.set()
        thread.join(timeout=30)
        accounting.close()  # as chalicelib.batch.main does: the queued usage records written
    assert accounting.usage is not None and accounting.usage.failures == 0
    assert accounting.counts["accounting_errors"] == 0
    api_calls = exercised(api.recorder.calls, stage)
    worker_calls = exercised(worker_side.recorder.calls, stage)
    assert covers(api_calls, API_MUST_EXERCISE) == set()
    assert covers(worker_calls, WORKER_MUST_EXERCISE) == set()
    assert denied(API_POLICY, api_calls) == []
    assert denied(WORKER_POLICY, worker_calls) == []


def policy_for(username: str) -> dict[str, Any]:
    """The drop-folder user policy as IAM evaluates it for ``username``."""
    text = DROP_USER_POLICY.read_text().replace("${aws:username}", username)
    return dict(json.loads(text))


def test_the_drop_folder_user_policy_grants_a_user_their_own_folders_only(stage: str) -> None:
    settings = Settings(stage=stage)
    bucket = settings.drop_bucket_name
    user = "iam-drop-alice"
    session = boto3.Session(region_name="us-east-1")
    recorder = CallRecorder(session)
    s3 = session.client("s3")
    # Not .jsonl: a real batch would start, and this test is about who may write where.
    s3.put_object(Bucket=bucket, Key=f"inbox/{user}/questions.txt", Body=b"{}\n")
    operator = boto3.client("s3", region_name="us-east-1")
    operator.put_object(Bucket=bucket, Key=f"outbox/{user}/questions.status.json", Body=b"{}")
    s3.get_object(Bucket=bucket, Key=f"outbox/{user}/questions.status.json")["Body"].read()
    s3.list_objects_v2(Bucket=bucket, Prefix=f"outbox/{user}/")
    calls = exercised(recorder.calls, stage)
    assert {a for a, _ in calls} == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
    listing = {"s3:prefix": f"outbox/{user}/"}
    own, other = policy_for(user), policy_for("iam-drop-mallory")
    for action, resource in sorted(calls):
        context = listing if action == "s3:ListBucket" else None
        assert allows(own, action, resource, context), (action, resource)
        # The same calls by another user: their name is not in these prefixes.
        assert not allows(other, action, resource, context), (action, resource)
    # Alice on another user's folders, and on the other folder's verb: refused.
    prod = "arn:aws:s3:::first-prod-drop"
    assert not allows(own, "s3:PutObject", f"{prod}/inbox/iam-drop-mallory/q.jsonl")
    assert not allows(own, "s3:GetObject", f"{prod}/outbox/iam-drop-mallory/q.output.jsonl")
    assert not allows(own, "s3:PutObject", f"{prod}/outbox/{user}/q.status.json")
    assert not allows(own, "s3:GetObject", f"{prod}/inbox/{user}/q.jsonl")
    assert not allows(own, "s3:ListBucket", prod, {"s3:prefix": "outbox/iam-drop-mallory/"})
