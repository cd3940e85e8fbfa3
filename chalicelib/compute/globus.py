"""Globus Compute tasks by id: submit, collect, and re-attach after the poller that sent them died.

``GlobusTasks`` is the poller's executor for a Globus Compute endpoint. It speaks to the web
service through ``globus_compute_sdk.Client`` only (HTTP): ``create_batch`` + ``batch_run``
submit a task and answer its task id at once (the poller writes it on the request record before
waiting), and one thread per endpoint polls ``Client.get_task`` for the tasks still pending.
``attach(task_id)`` collects a task some other process submitted, the same way: a request
re-claimed after its poller died is not run again.

Why not ``globus_compute_sdk.Executor``: its futures learn their task id later, on a background
thread, and its results come over AMQP to the process that submitted them; a successor cannot
ask it for a task by id. Polling costs one ``GET /v2/tasks/<id>`` per pending task per interval
(``poll_s``, starting at ``poll_min_s`` and doubling while a task stays pending), and adds on
average half an interval to a request's latency.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from chalicelib.compute.executors import RemoteTaskError, TaskLostError

# The text of a Globus Compute task that failed because its worker died (parsl's WorkerLost):
# the infrastructure's failure, so the poller fails over rather than failing the request.
_WORKER_LOST = "WorkerLost"


class GlobusTasks:
    """``submit_to_registered_function`` / ``submit_task`` / ``attach`` over one endpoint."""

    def __init__(
        self,
        endpoint_id: str,
        client: Any = None,
        *,
        poll_min_s: float = 0.2,
        poll_s: float = 2.0,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._client = client
        self._poll_min_s = poll_min_s
        self._poll_s = poll_s
        # task id → (its future, when it is next due a poll, its current interval)
        self._pending: dict[str, tuple[Future[Any], float, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            # Imported here: only the poller on AWS needs it, and the Client authenticates
            # (GLOBUS_COMPUTE_CLIENT_ID/SECRET) when built.
            from globus_compute_sdk import Client

            self._client = Client()
        return self._client

    def submit_task(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> tuple[str, Future[Any]]:
        """Submit one task; its Globus task id (known once this returns) and its future."""
        batch = self.client.create_batch()
        batch.add(function_id, tuple(args or ()), kwargs or {})
        out = self.client.batch_run(self.endpoint_id, batch)
        task_id = str(out["tasks"][function_id][0])
        return task_id, self.attach(task_id)

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        return self.submit_task(function_id, args, kwargs)[1]

    def attach(self, task_id: str) -> Future[Any]:
        """A future for a task submitted earlier (by this process or another)."""
        future: Future[Any] = Future()
        with self._lock:
            self._pending[task_id] = (future, time.monotonic(), self._poll_min_s)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"globus-{self.endpoint_id[:8]}", daemon=True
                )
                self._thread.start()
        self._wake.set()
        return future

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [(t, f, i) for t, (f, at, i) in self._pending.items() if at <= now]
                nxt = min((at for _, at, _ in self._pending.values()), default=now + 1.0)
            for task_id, future, interval in due:
                self._poll(task_id, future, interval)
            self._wake.wait(max(0.0, nxt - time.monotonic()) if not due else 0.0)
            self._wake.clear()

    def _poll(self, task_id: str, future: Future[Any], interval: float) -> None:
        from globus_compute_sdk.errors import TaskExecutionFailed

        if future.cancelled():
            self._forget(task_id)
            return
        try:
            task = self.client.get_task(task_id)
        except TaskExecutionFailed as exc:
            self._forget(task_id)
            if _WORKER_LOST in exc.remote_data:
                future.set_exception(TaskLostError(f"Globus task {task_id}: worker lost"))
            else:
                future.set_exception(RemoteTaskError(exc.remote_data.strip()))
            return
        except Exception as exc:  # noqa: BLE001 - the service failing: the poller fails over
            self._forget(task_id)
            future.set_exception(TaskLostError(f"Globus task {task_id} unreadable: {exc}"))
            return
        if task.get("pending", True):
            nxt = min(interval * 2, self._poll_s)
            with self._lock:
                if task_id in self._pending:
                    self._pending[task_id] = (future, time.monotonic() + interval, nxt)
            return
        self._forget(task_id)
        if "result" in task:
            future.set_result(task["result"])
        else:
            future.set_exception(
                TaskLostError(f"Globus task {task_id} ended {task.get('reason', 'unknown')}")
            )

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        if cancel_futures:
            with self._lock:
                pending, self._pending = self._pending, {}
            for future, _, _ in pending.values():
                future.cancel()
