"""Globus Compute's own machinery under the local compute endpoint (``offline.compute_endpoint``).

Each task goes the way it goes to an HPC endpoint, so what fails there fails here:

- **packed as the SDK packs it**: the function serialized by ``ComputeSerializer`` as
  ``Client.register_function`` does (dill, by reference: module and name), the arguments by its
  data strategy, ``pack_buffers``; the submission measured as the one-task ``Batch`` body the
  SDK would POST, then a messagepack ``Task`` for the engine;
- **run by globus-compute-endpoint's** ``GlobusComputeEngine`` (parsl's HighThroughputExecutor:
  an interchange, and one ``LocalProvider`` block whose worker pool runs ``execute_task``), so
  the worker imports the function's module from its own path (set by ``worker_init``, as on a
  cluster): a module missing there is ``ModuleNotFoundError`` in the remote traceback;
- **read back** as a messagepack ``Result``, deserialized by the SDK. A failure is the service's
  text (the SDK raises it as ``TaskExecutionFailed``): the remote traceback (code
  ``RemoteExecutionError``), ``parsl...WorkerLost: Task failure due to loss of worker N on host
  H`` when a worker dies, ``MaxResultSizeExceeded(size, limit)`` from the engine's own check.

Limits: a submission over ``submission_limit_bytes`` is refused before it runs, as the web
service answers it (HTTP 413, ``TASK_PAYLOAD_TOO_LARGE``); a result over
``result_limit_bytes`` fails in the worker (``execute_task``'s ``result_size_limit``, which the
engines leave at its 10 MiB default: passed through here so it can be configured).

Why ``GlobusComputeEngine`` and not ``ProcessPoolEngine`` (measured, docs/hpc.md): it is what
the endpoint templates run, and only it reports a dead worker as the service does (WorkerLost)
and carries on; ``ProcessPoolEngine`` turns one dead worker into ``BrokenProcessPool`` for every
task, for ever after. Its price is the start (an interchange and a worker pool: seconds, not
milliseconds) and ~1 ms more per task.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_endpoint.engines import GlobusComputeEngine
from globus_compute_endpoint.engines.base import GCFuture
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.batch import Batch, create_user_runtime
from globus_compute_sdk.serialize import ComputeSerializer
from parsl.providers import LocalProvider

from chalicelib.settings import REPO_ROOT

# The HTTP answer of the web service to an oversize submission (docs/limits.rst: the SDK raises
# a GlobusAPIError "stating TASK_PAYLOAD_TOO_LARGE").
PAYLOAD_TOO_LARGE = "TASK_PAYLOAD_TOO_LARGE"
# parsl's watchdog looks for dead workers once a heartbeat (30 s by default): 2 s here, so a
# killed worker is reported in seconds. The shape of the report is the same.
HEARTBEAT_S = 2


class SubmissionTooLargeError(Exception):
    """The submission is over the limit: the web service refuses it with HTTP 413."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"{PAYLOAD_TOO_LARGE}: a task submission of {size_bytes} bytes is over the limit"
            f" of {limit_bytes} bytes"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class TaskFailed(Exception):
    """A task that failed on the endpoint, as the service reports it: ``remote_data`` is what
    the SDK's ``TaskExecutionFailed`` carries, ``code`` the Result's error code
    (``RemoteExecutionError``, ``MaxResultSizeExceeded``)."""

    def __init__(self, remote_data: str, code: str) -> None:
        super().__init__(remote_data)
        self.remote_data = remote_data
        self.code = code

    @property
    def worker_lost(self) -> bool:
        return bool(TaskExecutionFailed.WORKER_LOST_REGEX.search(self.remote_data))

    @property
    def summary(self) -> str:
        """The last line of the remote text: the exception, without the traceback."""
        lines = [line for line in self.remote_data.splitlines() if line.strip("-+ ")]
        return lines[-1].strip() if lines else self.code


@dataclass(frozen=True)
class PackedTask:
    task_id: uuid.UUID
    message: bytes
    submission_bytes: int


class _ResultLimitedEngine(GlobusComputeEngine):  # type: ignore[misc]
    """``GlobusComputeEngine`` whose ``execute_task`` gets the configured result limit."""

    def __init__(self, *args: Any, result_limit_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.result_limit_bytes = result_limit_bytes

    def _submit(
        self,
        resource_specification: dict[str, Any],
        func: Callable[..., Any],
        packed_task: bytes,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = {**(kwargs or {}), "result_size_limit": self.result_limit_bytes}
        return super()._submit(resource_specification, func, packed_task, args, kwargs)


def _guard(pid: int, kill: str) -> str:
    """A shell line that runs ``kill`` once process ``pid`` (the endpoint) is gone: a killed
    endpoint takes its interchange and workers with it (each holds a model in memory). Gone
    includes a zombie its parent has not reaped yet (``kill -0`` still succeeds on one): a
    parent that reads the endpoint's stderr to its end before reaping it would wait for ever
    on the interchange, which holds that stderr."""
    state = f"s=$(cat /proc/{pid}/stat 2>/dev/null) || break; s=${{s##*) }}"
    return (
        f"( while :; do {state}; case ${{s%% *}} in Z|X) break;; esac; sleep 1; done; {kill} )"
        " </dev/null >/dev/null 2>&1 &"
    )


class LocalGlobusEngine:
    """One ``GlobusComputeEngine`` with a ``LocalProvider`` block of ``workers`` workers."""

    def __init__(
        self,
        *,
        workers: int,
        run_dir: Path,
        functions: dict[str, Callable[..., Any]],
        submission_limit_bytes: int,
        result_limit_bytes: int,
        max_retries_on_system_failure: int = 0,
        worker_init: str = "",
    ) -> None:
        self.workers = workers
        self.submission_limit_bytes = submission_limit_bytes
        self._run_dir = run_dir
        self._serde = ComputeSerializer()
        # Registered as Client.register_function registers them: serialized once, by reference.
        self._functions = {name: self._serde.serialize(fn) for name, fn in functions.items()}
        # The id each stands for in the submission body (a registered function's UUID).
        self._function_ids = {name: uuid.uuid5(uuid.NAMESPACE_URL, name) for name in functions}
        self._endpoint_id = uuid.uuid4()
        self._runtime = create_user_runtime()
        endpoint_pid = os.getpid()
        python = shlex.quote(sys.executable)
        # What a site's worker_init does (infra/globus-compute/): the import path of the
        # functions, one thread per worker for N workers on N cores; then the caller's lines.
        setup = "\n".join(
            [
                f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}",
                "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false",
                worker_init,
                # The job runs in a process group of its own (LocalProvider): all of it goes.
                _guard(endpoint_pid, "kill -KILL 0"),
            ]
        )
        self._engine = _ResultLimitedEngine(
            result_limit_bytes=result_limit_bytes,
            max_retries_on_system_failure=max_retries_on_system_failure,
            max_workers_per_node=workers,
            # A worker per --workers, however many cores (parsl caps workers at cores/this).
            cores_per_worker=0.01,
            address="127.0.0.1",
            heartbeat_period=HEARTBEAT_S,
            # The components' idle poll (ms; they wake on every message regardless): parsl's 10
            # cost ~19 ms CPU a second per idle endpoint here, 100 costs ~4, same task latency.
            poll_period=100,
            heartbeat_threshold=HEARTBEAT_S * 5,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=setup),
            # The block is submitted on the scaling strategy's first round: 1 s, not 5.
            job_status_kwargs={"strategy_period": 1.0},
        )
        # The endpoint CLI's `python-exec MODULE` is exec(python -m MODULE): the same, without
        # the CLI (whose click pin is the conflict docs/hpc.md describes) or a PATH lookup.
        htex = self._engine.executor
        htex.launch_cmd = htex.launch_cmd.replace(
            "globus-compute-endpoint python-exec", f"{python} -m", 1
        )
        interchange = f"exec {python} -m parsl.executors.high_throughput.interchange"
        # $$ is the shell that execs into the interchange: the guard kills the interchange.
        htex.interchange_launch_cmd = [
            "/bin/bash",
            "-c",
            f"{_guard(endpoint_pid, 'kill -KILL $$')}\n{interchange}",
        ]
        self._started = threading.Event()
        self._backlog: list[tuple[GCFuture, bytes]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the interchange and the block (the workers connect a few seconds later); tasks
        submitted before this wait for it."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._engine.start(endpoint_id=self._endpoint_id, run_dir=str(self._run_dir))
        with self._lock:
            backlog, self._backlog = self._backlog, []
            self._started.set()
        for task_future, message in backlog:
            self._engine.submit(task_future, message, resource_specification={})

    def pack(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> PackedTask:
        """The task as the SDK would submit it; ``SubmissionTooLargeError`` when the service
        would refuse the submission, ``KeyError`` for a function not registered here."""
        function = self._functions[name]
        batch = Batch(None, serializer=self._serde, user_runtime=self._runtime)
        batch.add(self._function_ids[name], tuple(args), kwargs)
        # The body the SDK POSTs to the web service (Client.batch_run), as it encodes it.
        size_bytes = len(json.dumps(batch.prepare()).encode())
        if size_bytes > self.submission_limit_bytes:
            raise SubmissionTooLargeError(size_bytes, self.submission_limit_bytes)
        (payload,) = batch.tasks[self._function_ids[name]]
        task_id = uuid.uuid4()
        # What the service hands the endpoint: the registered function's buffer, then the
        # submitted args and kwargs (execute_task unpacks exactly three).
        buffer = self._serde.pack_buffers([function]) + payload
        message = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
        return PackedTask(task_id, message, size_bytes)

    def submit(self, task: PackedTask) -> Future[Any]:
        """The task's outcome: the function's result, or ``TaskFailed``."""
        task_future = GCFuture(task.task_id)
        outcome: Future[Any] = Future()

        def unpack(f: Future[Any]) -> None:
            try:
                result = messagepack.unpack(f.result())
                assert isinstance(result, Result), type(result).__name__
                if result.is_error:
                    code = result.error_details.code if result.error_details else "unknown"
                    outcome.set_exception(TaskFailed(result.data, code))
                else:
                    outcome.set_result(self._serde.deserialize(result.data))
            except Exception as exc:  # noqa: BLE001 - the caller's future carries it
                outcome.set_exception(exc)

        task_future.add_done_callback(unpack)
        with self._lock:
            if not self._started.is_set():
                self._backlog.append((task_future, task.message))
                return outcome
        self._engine.submit(task_future, task.message, resource_specification={})
        return outcome

    def wait_for_workers(self, timeout_s: float) -> list[int]:
        """The workers' pids once all ``workers`` run (they start seconds after ``start``)."""
        deadline = time.monotonic() + timeout_s
        while len(pids := self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pids)} of {self.workers} workers after {timeout_s} s")
            time.sleep(0.1)
        return pids

    def worker_pids(self) -> list[int]:
        """The worker processes of the block: the pool manager's spawned children, less the
        multiprocessing server it keeps (the one child bound to a socket address)."""
        pids: list[int] = []
        for job in list(self._engine.provider.resources.values()):
            try:
                children = psutil.Process(int(job["remote_pid"])).children(recursive=True)
            except (psutil.Error, KeyError, ValueError):
                continue  # a block starting or gone: its workers are not there to name
            for child in children:
                try:
                    if "spawn_main" in " ".join(child.cmdline()) and not any(
                        c.laddr for c in child.net_connections("unix")
                    ):
                        pids.append(child.pid)
                except psutil.Error:
                    continue  # this child exited while we looked (a killed worker): not a worker
        return sorted(pids)

    def shutdown(self, timeout_s: float = 15.0) -> None:
        """Stop the workers (mid-task ones too: nobody will collect their results), then the
        engine. Bounded: what is left when the endpoint exits, its guards kill."""
        if not self._started.is_set():
            return

        def stop() -> None:
            # The engine's own shutdown leaves the workers to the scaling strategy.
            self._engine.provider.cancel(list(self._engine.provider.resources))
            self._engine.shutdown()

        stopping = threading.Thread(target=stop, name="engine-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():
            print(f"engine shutdown unfinished after {timeout_s:g} s", file=sys.stderr, flush=True)
