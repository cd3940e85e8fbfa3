"""Reply queues idle for a day are deleted; live ones, busy ones and other queues stay.

Against the moto server: real listeners make and tag their queues, the sweeper runs with its
clock moved two days on (moto stamps ``CreatedTimestamp`` with the real time, so "aged" means
"swept from the future"), and the offline stack's scheduler runs the real app's scheduled
function in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest

from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from chalicelib.stores.replies import LAST_USED_TAG, ReplyListener, ReplySender
from chalicelib.stores.sweeper import ReplyQueueSweeper

DAY_S = 24 * 3600.0
TIMEOUT_S = 15.0


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {TIMEOUT_S} s")
        time.sleep(0.1)


@pytest.fixture
def prefix(services: Services) -> str:
    """A reply prefix of this test's own, so other tests' queues are never in the sweep."""
    return f"{services.settings.reply_queue_name_prefix}-{uuid.uuid4().hex[:6]}"


def names(services: Services, prefix: str) -> set[str]:
    urls = services.sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    return {u.rsplit("/", 1)[-1] for u in urls}


def tag_of(services: Services, url: str) -> str:
    return str(services.sqs.list_queue_tags(QueueUrl=url)["Tags"][LAST_USED_TAG])


def test_only_queues_idle_for_a_day_are_swept(services: Services, prefix: str) -> None:
    sqs = services.sqs
    start = time.time()
    later = Clock(start)
    gone = ReplyListener(sqs, f"{prefix}-gone", wait_s=1)  # a container that went away
    live = ReplyListener(sqs, f"{prefix}-live", wait_s=1, touch_s=3600, clock=later)
    busy = ReplyListener(sqs, f"{prefix}-busy", wait_s=1)
    try:
        gone_url, live_url, busy_url = gone.url, live.url, busy.url
        gone.close()
        busy.close()  # stopped listening, but a notice arrived since: used within the minute
        assert ReplySender(sqs).send(busy_url, {"request_id": "r1", "status": "completed"})
        # Not ours: a queue whose name only starts like the prefix, and the interactive queue.
        stranger = sqs.create_queue(QueueName=f"{prefix}x")["QueueUrl"]
        assert tag_of(services, gone_url) == str(int(start))

        # Two days pass; the live process keeps running and touches its queue's tag.
        later.now_s = start + 2 * DAY_S - 600
        wait_for(lambda: tag_of(services, live_url) == str(int(later.now_s)), "the touch")

        now = ReplyQueueSweeper(sqs, prefix, idle_s=DAY_S)
        assert now.sweep().deleted == [], "nothing is a day old yet"
        future = ReplyQueueSweeper(sqs, prefix, idle_s=DAY_S, clock=lambda: start + 2 * DAY_S)
        report = future.sweep()
        assert report.deleted == [f"{prefix}-gone"]
        assert report.examined == 3 and report.failed == 0
        assert names(services, prefix) == {f"{prefix}-live", f"{prefix}-busy", f"{prefix}x"}
        assert sqs.get_queue_url(QueueName=services.settings.interactive_queue_name)
        sqs.delete_queue(QueueUrl=stranger)
    finally:
        live.close(delete_queue=True)
        busy.close(delete_queue=True)


def test_a_listener_whose_queue_was_swept_makes_it_again(services: Services, prefix: str) -> None:
    listener = ReplyListener(services.sqs, f"{prefix}-frozen", wait_s=1)
    try:
        url = listener.url
        sweeper = ReplyQueueSweeper(services.sqs, prefix, idle_s=0)
        assert sweeper.sweep().deleted == [f"{prefix}-frozen"]
        listener.expect("req_after_sweep")
        notice = {"request_id": "req_after_sweep", "status": "completed"}
        # The listener's next receive finds its queue gone and makes it again (same URL).
        wait_for(lambda: ReplySender(services.sqs).send(url, notice), "a send to the new queue")
        assert listener.wait("req_after_sweep", TIMEOUT_S) == notice
    finally:
        listener.close(delete_queue=True)


def test_the_offline_scheduler_runs_the_apps_sweep(services: Services, prefix: str) -> None:
    """``python -m offline.scheduler --once``: the real app's scheduled function, in the
    stack's environment, sweeps that stage's reply queues."""
    old = ReplyListener(services.sqs, f"{prefix}-old", wait_s=1)
    url = old.url
    old.close()  # its container went away (a live listener would make its queue again)
    env = {
        **os.environ,
        "FIRST_STAGE": services.settings.stage,
        "FIRST_REPLY_QUEUE_PREFIX": prefix,
        "FIRST_REPLY_QUEUE_IDLE_S": "0",
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-m", "offline.scheduler", "--once"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    results = {x["scheduled_function"]: x["result"] for x in lines if "scheduled_function" in x}
    assert results["sweep_reply_queues"]["deleted"] == [f"{prefix}-old"]
    assert names(services, prefix) == set()
    assert ReplySender(services.sqs).send(url, {"request_id": "x"}) is False
