"""Batch under stress on the running stack: a batch worker killed with -9 mid-batch (the
supervisor restarts it) finishes the batch with no line run twice; a running batch keeps to its
share of the endpoints while interactive requests go through.

Run counts and task spans come from the compute endpoints' ``/stats`` (each task's submit and
finish, epoch seconds on this one machine): the tests compare their order, never a duration.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.conftest import TINY
from tests.e2e.test_batch import jsonl, submit, wait
from tests.e2e.test_durability import stats, wait_for


def spans(stack: BackgroundStack) -> dict[str, list[float | None]]:
    """Every task's [submitted, finished or None] on both local endpoints."""
    out: dict[str, list[float | None]] = {}
    for url in (stack.config.compute_url, stack.config.compute_b_url):
        out.update(stats(stack, url)["spans"])
    return out


def shard_runs(stack: BackgroundStack, batch_id: str) -> dict[int, int]:
    """How many times each shard of ``batch_id`` ran, over all its tries and both endpoints."""
    runs: dict[int, int] = {}
    for task, n in stats(stack)["runs"].items():
        if task.startswith(f"task-{batch_id}-shard-"):
            shard = int(task.removeprefix(f"task-{batch_id}-shard-").split("-")[0])
            runs[shard] = runs.get(shard, 0) + int(n)
    return runs


def output_ids(client: OpenAI, file_id: str) -> list[str]:
    return [json.loads(x)["custom_id"] for x in client.files.content(file_id).text.splitlines()]


def test_a_batch_worker_killed_mid_batch_finishes_it_with_no_line_run_twice(
    stack: BackgroundStack, client: OpenAI, services: Services
) -> None:
    lines = 48  # 12 shards of 4 (the suite's FIRST_BATCH_SHARD_LINES)
    batch = submit(client, jsonl(lines, max_tokens=4, prefix="kill"))

    def some_done() -> bool:
        b = client.batches.retrieve(batch.id)
        return bool(b.request_counts and b.request_counts.completed and b.status == "in_progress")

    wait_for(some_done, 60, "a shard to finish")
    worker = stack.pids()["batch"]
    before = services.batch_store.get(_owner(services, batch.id), batch.id)
    assert before is not None
    done_before = {int(n) for n in before.get("done_shards") or []}
    os.kill(worker, signal.SIGKILL)

    done = wait(client, batch.id, timeout_s=180)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (lines, 0)
    assert stack.pids()["batch"] != worker  # the supervisor started a new one
    # Every line once, in input order.
    assert done.output_file_id is not None
    assert output_ids(client, done.output_file_id) == [f"kill-{i}" for i in range(lines)]
    # Every shard ran exactly once: finished ones were not redone, the one running at the kill
    # was attached to (not started again) by the new worker.
    runs = shard_runs(stack, batch.id)
    assert runs == dict.fromkeys(range(lines // 4), 1)
    assert done_before  # some shards were finished before the kill


def _owner(services: Services, batch_id: str) -> str:
    table = services.dynamodb.Table(services.settings.batches_table_name)
    items = table.scan(ConsistentRead=True)["Items"]
    return str(next(i["owner"] for i in items if i["batch_id"] == batch_id))


def most_at_once(windows: list[tuple[float, float]]) -> int:
    """The largest number of windows open at one instant (a window ends before one that starts
    at the same instant)."""
    events = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_a_running_batch_keeps_to_its_share_and_interactive_requests_complete(
    stack: BackgroundStack, client: OpenAI, services: Services
) -> None:
    share = services.settings.batch_max_inflight_shards
    batch = submit(client, jsonl(48, max_tokens=8, prefix="share"))
    wait_for(
        lambda: client.batches.retrieve(batch.id).status != "validating", 60, "the batch to start"
    )

    def ask(i: int) -> Any:
        return client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": f"Quick question {i}"}],
            max_tokens=4,
            temperature=0,
        )

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(a.choices[0].message.content is not None for a in answers)
    assert wait(client, batch.id, timeout_s=180).status == "completed"

    all_spans = spans(stack)
    now = time.time() + 1  # stands for "not finished yet"
    shard_windows = [
        (float(s[0] or 0), float(s[1] or now)) for t, s in all_spans.items() if "-shard-" in t
    ]
    # At no instant of the session did batch work hold more than its share of the endpoints.
    assert most_at_once(shard_windows) <= share
    # The interactive requests were served while the batch ran, not after it.
    ours = [s for t, s in all_spans.items() if t.startswith(f"task-{batch.id}-shard-")]
    first_start = min(float(s[0] or 0) for s in ours)
    last_end = max(float(s[1] or now) for s in ours)
    interactive = [
        s
        for t, s in all_spans.items()
        if "-shard-" not in t and s[1] is not None and first_start <= float(s[0] or 0)
    ]
    assert any(float(s[1] or now) <= last_end for s in interactive)
