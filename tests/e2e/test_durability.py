"""Nothing is lost: a killed poller's request completes exactly once; poison ends in the DLQ."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from offline.stack import answers
from tests.e2e.conftest import TINY


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def dispatched_request(services: Services, since: float) -> str | None:
    table = services.dynamodb.Table(services.settings.requests_table_name)
    for item in table.scan(ConsistentRead=True)["Items"]:
        if item["status"] == "dispatched" and float(item["created_at"]) >= since:
            return str(item["request_id"])
    return None


def stats(stack: BackgroundStack, url: str | None = None) -> dict[str, Any]:
    """One local endpoint's /stats, or (no url) every endpoint's runs and losses summed."""
    auth = {"Authorization": f"Bearer {stack.endpoint_token}"}
    if url is not None:
        return requests.get(f"{url}/stats", headers=auth, timeout=5).json()  # type: ignore[no-any-return]
    runs: dict[str, int] = {}
    lost = 0
    for each in (stack.config.compute_url, stack.config.compute_b_url):
        one = stats(stack, each)
        lost += int(one["lost"])
        for task, n in one["runs"].items():
            runs[task] = runs.get(task, 0) + int(n)
    return {"runs": runs, "lost": lost}


def ask_in_background(client: OpenAI, outcome: dict[str, Any], **kw: Any) -> threading.Thread:
    def ask() -> None:
        try:
            outcome["response"] = client.chat.completions.with_raw_response.create(
                model=TINY, temperature=0, **kw
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    caller = threading.Thread(target=ask)
    caller.start()
    return caller


def restarted(stack: BackgroundStack, name: str, old_pid: int) -> int | None:
    pid = stack.pids().get(name)
    return pid if pid not in (None, old_pid) else None


def test_killed_poller_request_completes_exactly_once_and_nothing_else_stops(
    client: OpenAI, stack: BackgroundStack, services: Services
) -> None:
    since = time.time()
    outcome: dict[str, Any] = {}
    caller = ask_in_background(
        client,
        outcome,
        messages=[{"role": "user", "content": "Tell me a long story"}],
        max_tokens=1200,
    )
    request_id = wait_for(lambda: dispatched_request(services, since), 20, "dispatch")
    before = stack.pids()
    os.kill(before["poller-0"], signal.SIGKILL)
    caller.join(60)

    # The client waited through it: the supervisor restarted the poller, whose successor took
    # the request over once the dead one's short lease ran out, well within the API's wait.
    assert "error" not in outcome, outcome.get("error")
    assert outcome["response"].headers["x-request-id"] == request_id
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "completed"
    assert record["attempt"] == 2  # claimed by the dead poller, then by its successor
    assert stats(stack)["runs"][f"task-{request_id}"] == 1  # the engine ran once
    after = stack.pids()
    assert after["poller-0"] != before["poller-0"]
    assert {k: v for k, v in after.items() if k != "poller-0"} == {
        k: v for k, v in before.items() if k != "poller-0"
    }


def test_a_killed_engine_worker_costs_its_task_once_and_its_request_is_answered(
    client: OpenAI, stack: BackgroundStack
) -> None:
    auth = {"Authorization": f"Bearer {stack.endpoint_token}"}
    url = stack.config.compute_url
    health = requests.get(f"{url}/health", headers=auth, timeout=5).json()
    before = stats(stack)
    runs_before = sum(before["runs"].values())
    outcomes: list[dict[str, Any]] = [{} for _ in range(4)]
    callers = [
        ask_in_background(
            client,
            outcome,
            messages=[{"role": "user", "content": f"Story number {i}"}],
            max_tokens=1200,
        )
        for i, outcome in enumerate(outcomes)
    ]
    wait_for(lambda: sum(stats(stack)["runs"].values()) >= runs_before + 4, 20, "four tasks")
    time.sleep(0.5)  # let the workers start generating
    os.kill(health["pids"][0], signal.SIGKILL)
    for caller in callers:
        caller.join(90)

    # Every request answered: at once, or, when the re-run outlasted the API's wait, by id after
    # the 504 that named it.
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    ours = []
    for o in outcomes:
        if "error" in o:
            assert isinstance(o["error"], openai.APIStatusError), o["error"]
            assert o["error"].status_code == 504, o["error"]
            request_id = o["error"].response.headers["x-request-id"]
            request_url = f"{stack.config.api_url}/v1/requests/{request_id}"
            wait_for(
                lambda u=request_url: (
                    requests.get(u, headers=headers, timeout=10).json()["status"] == "completed"
                ),
                120,
                f"{request_id} to complete",
            )
        else:
            assert o["response"].http_response.status_code == 200
            request_id = o["response"].http_response.headers["x-request-id"]
        ours.append(f"task-{request_id}")

    # The engine's pool replaced the worker (its manager starts the new one a moment after the
    # loss is noticed); the other worker's task carried on.
    def replaced() -> bool:
        pids = requests.get(f"{url}/health", headers=auth, timeout=5).json()["pids"]
        return health["pids"][0] not in pids and len(pids) == len(health["pids"])

    wait_for(replaced, 30, "the killed worker to be replaced")
    # The task the worker held failed as Globus Compute reports it (WorkerLost), once; the
    # poller read that as the infrastructure's failure and ran that one request again (on
    # local-b, or here): one task ran twice, no other ran more than once.
    after = stats(stack)
    assert after["lost"] == before["lost"] + 1
    assert sorted(after["runs"][task] for task in ours) == [1, 1, 1, 2]


def test_a_request_answered_is_read_back_completed(client: OpenAI, stack: BackgroundStack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}

    def one(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=TINY, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=1
        )
        request_id = raw.headers["x-request-id"]
        url = f"{stack.config.api_url}/v1/requests/{request_id}"
        return str(requests.get(url, headers=headers, timeout=10).json()["status"])

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(80)))
    assert statuses == ["completed"] * 80


def test_killed_api_server_is_restarted(client: OpenAI, stack: BackgroundStack) -> None:
    before = stack.pids()
    os.kill(before["api"], signal.SIGKILL)
    wait_for(lambda: restarted(stack, "api", before["api"]), 30, "the API to be restarted")
    wait_for(lambda: answers(f"{stack.config.api_url}/health"), 30, "the API to answer")
    r = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "still there?"}], max_tokens=1
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert stack.pids()["aws"] == before["aws"]  # state survived: the dev key still works


def test_poison_message_ends_in_the_dlq_with_its_request_failed(services: Services) -> None:
    request_id = f"req_poison{int(time.time() * 1000)}"
    # A record whose payload object is missing: every attempt to run it fails.
    services.requests.create(
        {
            "request_id": request_id,
            "owner": "dev",
            "model": TINY,
            "function": "chat_completions",
            "payload_key": f"requests/{request_id}/missing.json",
        }
    )
    services.interactive_queue.send({"request_id": request_id})
    services.interactive_queue.send({"not": "a request"})
    dlq_url = services.sqs.get_queue_url(
        QueueName=f"{services.settings.interactive_queue_name}-dlq"
    )["QueueUrl"]
    seen: list[Any] = []

    def drained() -> bool:
        out = services.sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        seen.extend(json.loads(m["Body"]) for m in out.get("Messages", []))
        return {"request_id": request_id} in seen and {"not": "a request"} in seen

    wait_for(drained, 60, "both poison messages in the DLQ")
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "failed"
    assert record["status_code"] == 500 and record["error"]["code"] == "engine_error"
