"""Globus Compute tasks by id: submit, collect, and re-attach after the poller that sent them died.

``GlobusTasks`` is the poller's executor for a Globus Compute endpoint. It speaks to the web
service through ``globus_compute_sdk.Client`` only (HTTP): ``create_batch`` + ``batch_run``
submit tasks and answer their task ids at once (the poller writes the id on the request record
before waiting), and one thread per endpoint polls the tasks still pending. ``attach(task_id)``
collects a task some other process submitted, the same way: a request re-claimed after its
poller died is not run again.

Cost, against the service's limit of 20 submissions per 10 s per client (docs/scaling.md):

- **Submissions are group-committed.** The first caller submits at once; callers arriving while
  a submission is in flight (or while the ``SubmissionPacer`` holds it back) join the next one,
  up to ``max_batch`` tasks per ``batch_run``. At low load a task goes alone and waits for
  nothing; under load one submission carries many tasks and the rate stays under the limit.
- **Polling is batched.** One ``get_batch_result`` (``POST /v2/batch_status``) reads every task
  due a poll; the SDK leaves a failed task out of that answer (it only logs it), so those are
  read one by one with ``get_task``, which raises the task's remote exception.
- **Nothing is kept.** The SDK's ``Client`` caches every finished task's result in memory for
  ever; a long-running poller drops each one as soon as it has collected it.
- **Nothing too large is sent.** The service refuses a submission over 5 MB, tasks included:
  a task is packed once, as the SDK packs it, when it is submitted; one over the limit raises
  ``TaskTooLargeError`` there, and a group commit stops adding tasks before the limit.

Why not ``globus_compute_sdk.Executor``: its futures learn their task id later, on a background
thread, and its results come over AMQP to the process that submitted them; a successor cannot
ask it for a task by id.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from chalicelib.compute.errors import TaskLostError, remote_error
from chalicelib.compute.sizes import (
    SUBMIT_ENVELOPE_BYTES,
    check_submission,
    pack_task,
    submitted_bytes,
)

# The text of a Globus Compute task that failed because its worker died (parsl's WorkerLost):
# the infrastructure's failure, so the poller fails over rather than failing the request.
_WORKER_LOST = "WorkerLost"
# Task ids per ``POST /v2/batch_status``.
POLL_CHUNK = 128


def take_batch(
    outbox: list[_Submission], max_tasks: int, max_bytes: int | None
) -> tuple[list[_Submission], list[_Submission]]:
    """The next submission's tasks (in order, at most ``max_tasks``, together under
    ``max_bytes``: every task alone is) and those left for the one after."""
    room = None if max_bytes is None else max_bytes - SUBMIT_ENVELOPE_BYTES
    n = 0
    for sub in outbox[:max_tasks]:
        if room is not None:
            room -= sub.size_bytes
            if room < 0 and n > 0:
                break
        n += 1
    return outbox[:n], outbox[n:]


def _settle_future(
    future: Future[Any], *, result: Any = None, error: Exception | None = None
) -> None:
    """Give the poller its outcome, unless it has cancelled the future meanwhile (its
    ``task_timeout_s`` passed): that must not kill the polling thread."""
    if not future.set_running_or_notify_cancel():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SubmissionPacer:
    """At most ``limit`` submissions in any ``window_s``, shared by every endpoint of a client
    (the service counts per client, not per endpoint)."""

    def __init__(self, limit: int = 20, window_s: float = 10.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait_s(self, now: float) -> float:
        """How long the next submission must wait; 0 when it may go now."""
        with self._lock:
            while self._sent and now - self._sent[0] >= self.window_s:
                self._sent.popleft()
            if len(self._sent) < self.limit:
                return 0.0
            return self._sent[0] + self.window_s - now

    def sent(self, now: float) -> None:
        with self._lock:
            self._sent.append(now)


@dataclass
class _Submission:
    function_id: str
    # The task's arguments packed as ``Batch.add`` packs them, and its share of the body.
    payload: str
    size_bytes: int
    done: threading.Event = field(default_factory=threading.Event)
    task_id: str | None = None
    error: BaseException | None = None


class GlobusTasks:
    """``submit_to_registered_function`` / ``submit_task`` / ``attach`` over one endpoint."""

    def __init__(
        self,
        endpoint_id: str,
        client: Any = None,
        *,
        poll_min_s: float = 0.2,
        poll_s: float = 2.0,
        max_batch: int = 64,
        pacer: SubmissionPacer | None = None,
        submit_limit_bytes: int | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._client = client
        self._poll_min_s = poll_min_s
        self._poll_s = poll_s
        self._max_batch = max_batch
        self._pacer = pacer or SubmissionPacer()
        # The service's limit on one submission's body (None: unchecked).
        self._submit_limit_bytes = submit_limit_bytes
        # Submissions waiting for the next batch_run, and whether a caller is sending one.
        self._outbox: list[_Submission] = []
        self._sending = False
        self.submissions = 0  # batch_run calls made (tests and bench read it)
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
        """Submit one task; its Globus task id (known once this returns) and its future.
        A task over the submission limit raises ``TaskTooLargeError``, and nothing is sent."""
        payload = pack_task(tuple(args or ()), kwargs or {})
        size_bytes = submitted_bytes(payload)
        check_submission(size_bytes, self._submit_limit_bytes)
        mine = _Submission(function_id, payload, size_bytes)
        with self._lock:
            self._outbox.append(mine)
            lead = not self._sending
            if lead:
                self._sending = True
        if lead:
            self._send_while_queued()
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        assert mine.task_id is not None
        return mine.task_id, self.attach(mine.task_id)

    def _send_while_queued(self) -> None:
        """The leader: send what is queued, batch by batch, until nothing is."""
        while True:
            pause = self._pacer.wait_s(time.monotonic())
            if pause > 0:
                time.sleep(pause)  # others keep joining the batch meanwhile
            with self._lock:
                batch, self._outbox = take_batch(
                    self._outbox, self._max_batch, self._submit_limit_bytes
                )
                if not batch:
                    self._sending = False
                    return
            self._send(batch)

    def _send(self, batch: list[_Submission]) -> None:
        try:
            request = self.client.create_batch()
            for sub in batch:
                # What ``request.add`` would append (the SDK's packing), packed once already.
                request.tasks[uuid.UUID(sub.function_id)].append(sub.payload)
            self._pacer.sent(time.monotonic())
            self.submissions += 1
            out = self.client.batch_run(self.endpoint_id, request)
            # Task ids come back per function, in the order the tasks were added.
            ids = {fn: list(tids) for fn, tids in out["tasks"].items()}
            for sub in batch:
                sub.task_id = str(ids[sub.function_id].pop(0))
        except Exception as exc:  # noqa: BLE001 - each caller raises it (the poller fails over)
            for sub in batch:
                if sub.task_id is None:
                    sub.error = exc
        finally:
            for sub in batch:
                sub.done.set()

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
            for i in range(0, len(due), POLL_CHUNK):
                self._poll_many(due[i : i + POLL_CHUNK])
            self._wake.wait(max(0.0, nxt - time.monotonic()) if not due else 0.0)
            self._wake.clear()

    def _poll_many(self, due: list[tuple[str, Future[Any], float]]) -> None:
        """One ``get_batch_result`` for the lot; one by one what it could not answer."""
        live = []
        for task_id, future, interval in due:
            if future.cancelled():  # the poller gave up on it (timeout)
                self._forget(task_id)
            else:
                live.append((task_id, future, interval))
        if not live:
            return
        try:
            states: dict[str, Any] = self.client.get_batch_result([t for t, _, _ in live])
        except Exception:  # noqa: BLE001 - one by one: each task gets its own outcome
            states = {}
        for task_id, future, interval in live:
            task = states.get(task_id)
            if task is None:
                # Failed tasks (the SDK drops them from a batch answer), or the batch failed.
                self._poll(task_id, future, interval)
            else:
                self._settle(task_id, future, interval, task)

    def _poll(self, task_id: str, future: Future[Any], interval: float) -> None:
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            task = self.client.get_task(task_id)
        except TaskExecutionFailed as exc:
            self._forget(task_id)
            if _WORKER_LOST in exc.remote_data:
                _settle_future(future, error=TaskLostError(f"Globus task {task_id}: worker lost"))
            else:
                _settle_future(future, error=remote_error(exc.remote_data.strip()))
            return
        except Exception as exc:  # noqa: BLE001 - the service failing: the poller fails over
            self._forget(task_id)
            _settle_future(future, error=TaskLostError(f"Globus task {task_id} unreadable: {exc}"))
            return
        self._settle(task_id, future, interval, task)

    def _settle(
        self, task_id: str, future: Future[Any], interval: float, task: dict[str, Any]
    ) -> None:
        if task.get("pending", True):
            nxt = min(interval * 2, self._poll_s)
            with self._lock:
                if task_id in self._pending:
                    self._pending[task_id] = (future, time.monotonic() + interval, nxt)
            return
        self._forget(task_id)
        if "result" in task:
            _settle_future(future, result=task["result"])
        else:
            _settle_future(
                future,
                error=TaskLostError(f"Globus task {task_id} ended {task.get('reason', 'unknown')}"),
            )

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)
        # The SDK's Client keeps every finished task's result (_task_status_table) for ever.
        table = getattr(self._client, "_task_status_table", None)
        if isinstance(table, dict):
            table.pop(task_id, None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        if cancel_futures:
            with self._lock:
                pending, self._pending = self._pending, {}
            for future, _, _ in pending.values():
                future.cancel()
