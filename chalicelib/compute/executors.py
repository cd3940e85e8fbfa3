"""Executors the poller submits to: ``concurrent.futures.Executor`` with Globus Compute's API.

Both expose ``submit_to_registered_function(function_id, args=..., kwargs=...)`` returning a
``Future`` of the function's result, so the poller does not know which it holds:

- ``GlobusTasks`` (``chalicelib/compute/globus.py``) for a real endpoint on an HPC cluster; it
  is also ``Attachable``: ``submit_task`` answers the Globus task id at once (the poller keeps it
  on the request record) and ``attach(task_id)`` collects a task another poller submitted;
- ``LocalEndpointExecutor`` for the offline endpoint (``offline.compute_endpoint``),
  which keys tasks by ``request_id``: a poller that restarts and resubmits the same request
  attaches to the task already running instead of running the engine twice.

A warm-up is an ordinary task: ``hpc_functions.warm`` with ``{"engine": ...}`` (``start_warm``).

Both refuse a task over Globus Compute's submission limit before sending it
(``chalicelib.compute.sizes``). They report in the compute adapter's own errors
(``chalicelib.compute.errors``), never an HTTP error: a result the endpoint refused as over the
service's result limit comes back as ``ResultTooLargeError``, an endpoint that cannot be reached
as ``EndpointUnreachableError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from chalicelib.compute.errors import (
    EndpointUnreachableError,
    TaskLostError,
    TaskTooLargeError,
    remote_error,
)
from chalicelib.compute.sizes import check_submission, pack_task, submitted_bytes
from chalicelib.registry import Endpoint


class TaskExecutor(Protocol):
    """What the poller holds: the part of Globus Compute's ``Executor`` API it uses."""

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


@runtime_checkable
class Attachable(Protocol):
    """An executor whose tasks have ids that outlive the process that submitted them."""

    def submit_task(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> tuple[str, Future[Any]]: ...

    def attach(self, task_id: str) -> Future[Any]: ...


def start_warm(executor: TaskExecutor, function_id: str, engine: dict[str, Any]) -> Future[Any]:
    """Ask an endpoint to load a model (``hpc_functions.warm``); the future ends when loaded."""
    return executor.submit_to_registered_function(function_id, args=({"engine": engine},))


class LocalEndpointExecutor(Executor):
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        poll_s: float = 20.0,
        max_waiters: int = 64,
        unreachable_s: float = 10.0,
        submit_limit_bytes: int | None = None,
    ) -> None:
        import requests

        self._base = base_url.rstrip("/")
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"
        # One kept-alive connection per waiting task (requests keeps only 10 by default).
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max_waiters + 8)
        self._http.mount("http://", adapter)
        self._poll_s = poll_s
        self._unreachable_s = unreachable_s
        # The stand-in for the service checks what the service would (None: nothing).
        self._submit_limit_bytes = submit_limit_bytes
        self._waiters = ThreadPoolExecutor(max_waiters, thread_name_prefix="local-task")
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.submit_to_registered_function(f"local:{fn.__name__}", args, kwargs)

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        if self._submit_limit_bytes is not None:
            packed = pack_task(tuple(args or ()), kwargs or {})
            check_submission(submitted_bytes(packed), self._submit_limit_bytes)
        body = {"function_id": function_id, "args": list(args or ()), "kwargs": kwargs or {}}
        return self._waiters.submit(self._run, body)

    def _run(self, body: dict[str, Any]) -> Any:
        # Submit and wait in one round trip: a short task is collected by its submission.
        # Like the Globus Compute service, a submission waits out an endpoint that is
        # restarting (the caller's lease is kept alive meanwhile) rather than failing at once.
        resp = self._call(
            "post",
            "/tasks",
            json=body,
            params={"wait": self._poll_s},
            timeout=self._poll_s + 10,
            refused_ok=True,
        )
        if resp.status_code == 413:
            # The endpoint refused it as the web service does (TASK_PAYLOAD_TOO_LARGE).
            refusal = resp.json()
            raise TaskTooLargeError(int(refusal["size_bytes"]), int(refusal["limit_bytes"]))
        state = resp.json()
        while True:
            if state["status"] != "pending":
                return self._outcome(state)
            task_id = state["task_id"]
            resp = self._call(
                "get",
                f"/tasks/{task_id}",
                params={"wait": self._poll_s},
                timeout=self._poll_s + 10,
                lost_ok=True,
            )
            if resp.status_code == 404:
                # The endpoint restarted and forgot its tasks: run the request again.
                raise TaskLostError(f"the local endpoint no longer knows {task_id}")
            state = {"task_id": task_id, **resp.json()}

    @staticmethod
    def _outcome(state: dict[str, Any]) -> Any:
        if state["status"] == "success":
            return state["result"]
        if state["status"] == "failed":
            raise remote_error(state.get("exception") or "task failed")
        raise TaskLostError(state.get("exception") or f"task {state['status']}")

    def _call(
        self, method: str, path: str, *, lost_ok: bool = False, refused_ok: bool = False, **kw: Any
    ) -> Any:
        import requests

        deadline = time.monotonic() + self._unreachable_s
        while True:
            try:
                resp = self._http.request(method, f"{self._base}{path}", **kw)
            except requests.ConnectionError as exc:
                if time.monotonic() >= deadline:
                    raise EndpointUnreachableError(f"local endpoint unreachable: {exc}") from exc
                time.sleep(1.0)
                continue
            except requests.RequestException as exc:
                raise EndpointUnreachableError(f"local endpoint failed: {exc}") from exc
            if (resp.status_code == 404 and lost_ok) or (resp.status_code == 413 and refused_ok):
                return resp
            if resp.status_code >= 400:
                raise EndpointUnreachableError(
                    f"local endpoint answered {resp.status_code} to {method.upper()} {path}"
                )
            return resp

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._waiters.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._http.close()


class ExecutorPool:
    """One executor per registry endpoint, created on first use."""

    def __init__(self, factory: Callable[[Endpoint], TaskExecutor]) -> None:
        self._factory = factory
        self._executors: dict[str, TaskExecutor] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> TaskExecutor:
        with self._lock:
            if endpoint.name not in self._executors:
                self._executors[endpoint.name] = self._factory(endpoint)
            return self._executors[endpoint.name]

    def shutdown(self) -> None:
        with self._lock:
            for ex in self._executors.values():
                ex.shutdown(wait=False, cancel_futures=True)
            self._executors.clear()


def default_factory(
    local_endpoint_url: str,
    local_endpoint_token: str = "",
    *,
    submit_limit_bytes: int | None = None,
) -> Callable[[Endpoint], TaskExecutor]:
    pacer: Any = None  # one SubmissionPacer for every Globus endpoint: one client, one limit

    def make(endpoint: Endpoint) -> TaskExecutor:
        nonlocal pacer
        if endpoint.executor == "local":
            # Each local "cluster" of the offline stack listens on its own URL.
            return LocalEndpointExecutor(
                endpoint.url or local_endpoint_url,
                local_endpoint_token,
                submit_limit_bytes=submit_limit_bytes,
            )
        # The poller's only tie to the Globus Compute web service (it authenticates on first
        # use; the Lambda package never imports it).
        from chalicelib.compute.globus import GlobusTasks, SubmissionPacer

        pacer = pacer or SubmissionPacer()
        return GlobusTasks(endpoint.endpoint_id, pacer=pacer, submit_limit_bytes=submit_limit_bytes)

    return make
