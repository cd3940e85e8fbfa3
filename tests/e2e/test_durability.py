"""Nothing is lost: a killed poller's request completes exactly once; poison ends in the DLQ."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.stack import Stack
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


def test_killed_poller_request_completes_exactly_once(
    client: OpenAI, stack: Stack, services: Services
) -> None:
    since = time.time()
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            outcome["response"] = client.chat.completions.with_raw_response.create(
                model=TINY,
                messages=[{"role": "user", "content": "Tell me a long story"}],
                max_tokens=1200,
                temperature=0,
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    caller = threading.Thread(target=ask)
    caller.start()
    request_id = wait_for(lambda: dispatched_request(services, since), 20, "dispatch")
    ((name, poller),) = [
        (n, p) for n, p in stack.procs if n.startswith("poller") and p.poll() is None
    ]
    os.kill(poller.pid, signal.SIGKILL)
    poller.wait()
    stack.start_poller(index=len(stack.procs))
    caller.join(60)

    assert "error" not in outcome, outcome.get("error")
    assert outcome["response"].headers["x-request-id"] == request_id
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "completed"
    assert record["attempt"] == 2  # claimed by the dead poller, then by its successor
    runs = requests.get(f"{stack.config.compute_url}/stats").json()["runs"]
    assert runs[f"task-{request_id}"] == 1  # the engine ran once


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
