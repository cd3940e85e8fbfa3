"""A Globus Compute web service recorded at the HTTP level, for the real ``globus_compute_sdk.Client``.

Only the service's routes the poller uses answer: ``POST /v3/endpoints/<id>/submit`` (task ids
for a batch), ``GET /v2/tasks/<id>`` and ``POST /v2/batch_status`` (pending, then the result or
the remote exception, in the service's own serialized form). Everything else fails the test
(``responses`` refuses it).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import globus_sdk
import responses
from globus_compute_sdk import Client
from globus_compute_sdk.sdk._environments import get_web_service_url
from globus_compute_sdk.serialize import ComputeSerializer

BASE = get_web_service_url("production")
SERDE = ComputeSerializer()

# (task, how many times its status was read) → None (still pending), a result, or an exception
# text ("Traceback ...") as the endpoint reports a function that raised.
Behave = Callable[[dict[str, Any], int], Any]


class Raised(str):
    """A task outcome that is the function's exception (its remote traceback text)."""


class GlobusService:
    def __init__(self, mock: responses.RequestsMock, behave: Behave) -> None:
        self.behave = behave
        self.submitted: list[str] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.submissions: list[int] = []  # tasks per submission
        self.batch_polls = 0
        self.single_polls = 0
        self.submit_delay_s = 0.0
        self._lock = threading.Lock()
        mock.add_callback(
            responses.POST, re.compile(rf"{BASE}/v3/endpoints/[^/]+/submit"), self._submit
        )
        mock.add_callback(responses.GET, re.compile(rf"{BASE}/v2/tasks/[^/]+"), self._task)
        mock.add_callback(responses.POST, f"{BASE}/v2/batch_status", self._batch_status)

    def client(self) -> Client:
        return Client(do_version_check=False, authorizer=globus_sdk.NullAuthorizer())

    def add_task(self, task: dict[str, Any]) -> str:
        """A task submitted before this test's poller existed (by one that died)."""
        task_id = str(uuid.uuid4())
        with self._lock:
            self.tasks[task_id] = task
        return task_id

    def _submit(self, request: Any) -> tuple[int, dict[str, str], str]:
        time.sleep(self.submit_delay_s)  # a service that takes its time: callers pile up
        body = json.loads(request.body)
        with self._lock:
            self.submissions.append(sum(len(p) for p in body["tasks"].values()))
        out: dict[str, list[str]] = {}
        for function_id, payloads in body["tasks"].items():
            for payload in payloads:
                args, _kwargs = (SERDE.deserialize(b) for b in SERDE.unpack_buffers(payload))
                task_id = self.add_task(args[0])
                with self._lock:
                    self.submitted.append(task_id)
                out.setdefault(function_id, []).append(task_id)
        data = {
            "tasks": out,
            "request_id": str(uuid.uuid4()),
            "task_group_id": str(uuid.uuid4()),
            "endpoint_id": request.url.split("/")[-2],
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(data)

    def _task(self, request: Any) -> tuple[int, dict[str, str], str]:
        task_id = request.url.rsplit("/", 1)[-1]
        with self._lock:
            self.single_polls += 1
        data = self._state(task_id)
        if data is None:
            return 404, {"Content-Type": "application/json"}, json.dumps({"code": "not found"})
        return 200, {"Content-Type": "application/json"}, json.dumps(data)

    def _batch_status(self, request: Any) -> tuple[int, dict[str, str], str]:
        with self._lock:
            self.batch_polls += 1
        results = {}
        for task_id in json.loads(request.body)["task_ids"]:
            data = self._state(task_id)
            if data is not None:
                results[task_id] = data
        body = {"response": "batch", "results": results}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def _state(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self.tasks.get(task_id)
            n = self.reads[task_id] = self.reads.get(task_id, 0) + 1
        if task is None:
            return None
        outcome = self.behave(task, n)
        data: dict[str, Any] = {"task_id": task_id, "status": "waiting-for-launch"}
        if isinstance(outcome, Raised):
            data.update(status="failed", exception=str(outcome), completion_t="1")
        elif outcome is not None:
            data.update(status="success", result=SERDE.serialize(outcome), completion_t="1")
        return data
