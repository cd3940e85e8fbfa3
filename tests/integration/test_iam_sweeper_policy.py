"""The reply queues' IAM: the API may tag its own reply queue (the last-used tag, at creation and
on each touch), and the sweeper's own policy allows every call a sweep makes, nothing on any
other queue.

As in ``test_iam_policies``: each side on its own recorded boto3 session against the moto
server, its calls (this test's stage renamed ``prod``) checked against the production policy.
"""

from __future__ import annotations

import json
import time
import uuid

import boto3

from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.replies import LAST_USED_TAG, ReplyListener, process_queue_name
from tests.iam import Call, CallRecorder, allows

API_POLICY = REPO_ROOT / ".chalice" / "policy-prod.json"
SWEEPER_POLICY = REPO_ROOT / ".chalice" / "policy-prod-sweeper.json"
TIMEOUT_S = 15.0


class Clock:
    def __init__(self) -> None:
        self.now_s = time.time() - 1000  # in the past: the sweep (real time) finds it idle

    def __call__(self) -> float:
        return self.now_s


def recorded(settings: Settings) -> tuple[Services, CallRecorder]:
    session = boto3.Session(region_name="us-east-1")
    recorder = CallRecorder(session)
    return Services(settings, session=session), recorder


def prod(calls: list[Call], stage: str) -> set[tuple[str, str]]:
    return {(c.action, c.resource.replace(f"first-{stage}-", "first-prod-")) for c in calls}


def test_the_api_tags_its_reply_queue_and_the_sweeper_may_sweep_it(stage: str) -> None:
    settings = Settings(stage=stage, reply_queue_touch_s=60, reply_queue_idle_s=0)
    api, api_calls = recorded(settings)
    sqs = boto3.client("sqs", region_name="us-east-1")  # the test's own look, unrecorded
    clock = Clock()  # moved on below, so the listener's touch is due
    name = process_queue_name(settings.reply_queue_name_prefix)
    listener = ReplyListener(api.sqs, name, wait_s=1, touch_s=60, clock=clock)
    url = listener.url
    clock.now_s += 120
    deadline = time.monotonic() + TIMEOUT_S
    while sqs.list_queue_tags(QueueUrl=url)["Tags"][LAST_USED_TAG] != str(int(clock.now_s)):
        assert time.monotonic() < deadline, "the listener never touched its queue"
        time.sleep(0.1)
    listener.close()

    # A queue of another kind the sweep must leave alone even with idle_s=0.
    other = sqs.create_queue(QueueName=f"first-{stage}-other-{uuid.uuid4().hex[:6]}")
    sweeper, sweeper_calls = recorded(settings)
    report = sweeper.reply_sweeper.sweep()
    assert url.rsplit("/", 1)[-1] in report.deleted
    sqs.delete_queue(QueueUrl=other["QueueUrl"])

    api_made = prod(api_calls.calls, stage)
    swept = prod(sweeper_calls.calls, stage)
    assert {a for a, _ in api_made} >= {"sqs:CreateQueue", "sqs:TagQueue", "sqs:ReceiveMessage"}
    assert {a for a, _ in swept} == {
        "sqs:ListQueues",
        "sqs:GetQueueAttributes",
        "sqs:ListQueueTags",
        "sqs:DeleteQueue",
    }
    api_policy = json.loads(API_POLICY.read_text())
    sweeper_policy = json.loads(SWEEPER_POLICY.read_text())
    assert sorted(c for c in api_made if not allows(api_policy, *c)) == []
    assert sorted(c for c in swept if not allows(sweeper_policy, *c)) == []
    # Least privilege: the sweeper's policy reaches no queue but the reply queues.
    for queue in ("first-prod-interactive", "first-prod-batch", "first-prod-other-x"):
        assert not allows(sweeper_policy, "sqs:DeleteQueue", f"arn:aws:sqs:us-east-1:1:{queue}")
