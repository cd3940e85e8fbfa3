"""Executors the poller submits to: ``concurrent.futures.Executor`` with Globus Compute's API.

Both expose ``submit_to_registered_function(function_id, args=..., kwargs=...)`` returning a
``Future`` of the function's result, so the poller does not know which it holds:

- ``globus_compute_sdk.Executor`` for a real endpoint on an HPC cluster;
- ``LocalEndpointExecutor`` for the offline endpoint (``offline.compute_endpoint``),
  which keys tasks by ``request_id``: a poller that restarts and resubmits the same request
  attaches to the task already running instead of running the engine twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from chalicelib.errors import UpstreamUnavailableError
from chalicelib.registry import Endpoint


class RemoteTaskError(Exception):
    """The function raised on the endpoint; the message is the remote exception's text."""


class TaskLostError(UpstreamUnavailableError):
    """The endpoint lost the task with its worker: the infrastructure failed, not the request,
    so the poller runs it again (bounded by the queue's redrive)."""


class LocalEndpointExecutor(Executor):
    def __init__(
        self, base_url: str, token: str, *, poll_s: float = 20.0, max_waiters: int = 64
    ) -> None:
        import requests

        self._base = base_url.rstrip("/")
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._poll_s = poll_s
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
        import requests

        body = {"function_id": function_id, "args": list(args or ()), "kwargs": kwargs or {}}
        try:
            resp = self._http.post(f"{self._base}/tasks", json=body, timeout=10)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise UpstreamUnavailableError(f"local endpoint unreachable: {exc}") from exc
        task_id = resp.json()["task_id"]
        return self._waiters.submit(self._result, task_id)

    def _result(self, task_id: str) -> Any:
        import requests

        while True:
            try:
                resp = self._http.get(
                    f"{self._base}/tasks/{task_id}",
                    params={"wait": self._poll_s},
                    timeout=self._poll_s + 10,
                )
                resp.raise_for_status()
            except requests.RequestException as exc:
                raise UpstreamUnavailableError(f"local endpoint lost task: {exc}") from exc
            state = resp.json()
            if state["status"] == "success":
                return state["result"]
            if state["status"] == "failed":
                raise RemoteTaskError(state.get("exception") or "task failed")
            if state["status"] == "lost":
                raise TaskLostError(state.get("exception") or "task lost")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._waiters.shutdown(wait=wait, cancel_futures=cancel_futures)
        self._http.close()


class ExecutorPool:
    """One executor per registry endpoint, created on first use."""

    def __init__(self, factory: Callable[[Endpoint], Executor]) -> None:
        self._factory = factory
        self._executors: dict[str, Executor] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> Executor:
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
    local_endpoint_url: str, local_endpoint_token: str = ""
) -> Callable[[Endpoint], Executor]:
    def make(endpoint: Endpoint) -> Executor:
        if endpoint.executor == "local":
            return LocalEndpointExecutor(local_endpoint_url, local_endpoint_token)
        # Imported here: the Lambda package never needs it, and it is the poller's only tie
        # to the Globus Compute web service (it authenticates on first submit).
        from globus_compute_sdk import Executor as GlobusComputeExecutor

        return GlobusComputeExecutor(endpoint_id=endpoint.endpoint_id)  # type: ignore[no-any-return]

    return make
