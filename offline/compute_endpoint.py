"""The offline stand-in for a Globus Compute endpoint on an HPC cluster.

A separate process, as a real endpoint is: tasks outlive the poller that submitted them, so a
poller killed mid-request can restart and collect the result. Tasks run through Globus Compute's
own machinery (``offline.globus_engine``): packed as the SDK packs them, executed by
``globus-compute-endpoint``'s ``GlobusComputeEngine`` in a worker pool whose workers keep their
engines warm between tasks, exactly like ``hpc_functions`` on a GPU node, and held to the hosted
service's limits (``FIRST_COMPUTE_SUBMIT_LIMIT_BYTES``, ``FIRST_COMPUTE_RESULT_LIMIT_BYTES``).

HTTP, JSON in and out, 127.0.0.1 only. Every route but ``/health`` needs the stack's secret
(``FIRST_LOCAL_ENDPOINT_TOKEN``, made per stack by ``offline.stack``) as
``Authorization: Bearer …``: any user of the machine can reach a loopback port, and task results
are users' completions::

    POST /tasks?wait=S {"function_id": "local:<name>", "args": [...], "kwargs": {...}}
                       → {"task_id", "status", ...} as GET /tasks/<id> below, after waiting up
                       to S seconds (0: at once); a task whose first argument carries a
                       request_id is keyed by it, so resubmitting the same request attaches to
                       the existing task. A submission over the limit is refused as the web
                       service refuses it: 413 {"code": "TASK_PAYLOAD_TOO_LARGE", "message",
                       "size_bytes", "limit_bytes"}, and nothing runs.
    GET  /tasks/<id>?wait=S  → {"status": "pending"|"success"|"failed", "result" | "exception",
                                "code"}: "exception" is the text the service reports (the SDK's
                                TaskExecutionFailed.remote_data: the remote traceback,
                                "...WorkerLost: Task failure due to loss of worker N on host H",
                                "MaxResultSizeExceeded(size, limit)"), "code" the Result's
                                error code (RemoteExecutionError, MaxResultSizeExceeded)
    GET  /health       → {"status": "ok"|"starting", "workers": N, "pids": [...],
                          "models": {model: "hot"|"starting"|"cold"},
                          "ready_in_s": {model: seconds, for a starting model whose load
                                         this endpoint has timed before}}
                          200 once the preheat models are loaded; 503 (same body) before:
                          it listens at once, so the poller sees it starting, and tasks
                          sent meanwhile wait for the workers.
    GET  /stats        → {"runs": {task_id: times the function ran}, "lost": N,
                          "spans": {task_id: [submitted, finished or null]}} (epoch seconds of its
                          last run: tests check how many tasks of a kind overlapped)

A worker that dies (killed, out of memory) fails the task it was running with parsl's
``WorkerLost``, as on a real endpoint; the pool starts a new worker and the other tasks carry on.
Such a task is retried by the engine ``--max-retries-on-system-failure`` times (0, the engine's
default and the templates'); after that it is counted ``lost`` and the poller, which reads
``WorkerLost`` as the infrastructure's failure, runs the request again (bounded). A resubmitted
request whose task was lost runs anew rather than attaching to the lost one.

Model states (``ModelStates``): a model of this endpoint is ``hot`` once loaded, ``starting``
while it loads, ``cold`` before (``--cold MODEL``, ``--no-preheat``), ``unavailable`` when its
load failed in every worker (why is logged; a later task for it tries again). A ``local:warm``
task, or a task for a cold model, starts a load: one ``hpc_functions.warm`` task per worker, so
idle workers each load it; the model is hot when the first finishes (a worker busy meanwhile
loads it on its next task for that model). States are kept per engine (tasks carry the engine's
config): a registry model served by the same engine as another (an alias for another group)
reads as that engine does.
"""

from __future__ import annotations

import argparse
import hmac
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from offline.globus_engine import (
    PAYLOAD_TOO_LARGE,
    LocalGlobusEngine,
    SubmissionTooLargeError,
    TaskFailed,
)

HOT, STARTING, COLD, UNAVAILABLE = "hot", "starting", "cold", "unavailable"
# Finished tasks are kept this long for late (re)attaching pollers.
KEEP_FINISHED_S = 15 * 60
TOKEN_ENV = "FIRST_LOCAL_ENDPOINT_TOKEN"
# Workers (a spawned pool) are up within seconds; this long means the pool cannot start.
WORKERS_START_S = 300.0
# A sanity bound on what is read at all; the submission limit is checked on the packed task.
MAX_BODY_BYTES = 64 * 1024 * 1024


def _failure(exc: BaseException) -> tuple[str, str]:
    """(the service's text for a failed task, its error code)."""
    if isinstance(exc, TaskFailed):
        return exc.remote_data, exc.code
    # The endpoint's own failure reading the result back (not the function's).
    return f"{type(exc).__name__}: {exc}", "EndpointError"


def _lost(exc: BaseException | None) -> bool:
    return isinstance(exc, TaskFailed) and exc.worker_lost


def _why(exc: BaseException) -> str:
    return exc.summary if isinstance(exc, TaskFailed) else f"{type(exc).__name__}: {exc}"


class ModelStates:
    """hot | starting | cold per model, with how long its last load took (for ``ready_in_s``)."""

    def __init__(self, known: dict[str, dict[str, Any]], preheat: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        # Registry model → the engine's model name, the key of every state below.
        self._aliases = {name: str(config.get("model") or name) for name, config in known.items()}
        self.engines = {self._aliases[name]: config for name, config in known.items()}
        self._state = {engine: (COLD, now) for engine in self._aliases.values()}
        # A future per model that is loading: done when it is hot (or failed to load).
        self.ready: dict[str, Future[Any]] = {}
        for config in preheat:
            self.engines[str(config.get("model"))] = config
            self._state[str(config.get("model"))] = (STARTING, now)
            self.ready[str(config.get("model"))] = Future()
        self._load_s: dict[str, float] = {}
        self._lock = threading.Lock()

    def begin(self, name: str, config: dict[str, Any]) -> tuple[Future[Any], bool]:
        """The model's ready future; True when the caller must start its load."""
        with self._lock:
            self.engines.setdefault(name, config)
            state, _ = self._state.get(name, (COLD, 0.0))
            if state == HOT:
                done: Future[Any] = Future()
                done.set_result({"status": HOT, "model": name})
                return done, False
            if state == STARTING and name in self.ready:
                return self.ready[name], False
            self._state[name] = (STARTING, time.monotonic())
            future: Future[Any] = Future()
            self.ready[name] = future
            return future, True

    def loaded(
        self, name: str, result: dict[str, Any] | None = None, *, timed: bool = True
    ) -> None:
        with self._lock:
            state, since = self._state.get(name, (COLD, time.monotonic()))
            if state != STARTING:
                return
            if timed:
                self._load_s[name] = time.monotonic() - since
            self._state[name] = (HOT, time.monotonic())
            future = self.ready.pop(name, None)
        if future is not None:
            future.set_result({"status": HOT, "model": name, **(result or {})})

    def failed(self, name: str, exc: BaseException) -> None:
        """Its load failed in every worker: unavailable here until a later load succeeds."""
        with self._lock:
            self._state[name] = (UNAVAILABLE, time.monotonic())
            future = self.ready.pop(name, None)
        if future is not None:
            future.set_exception(exc)

    def view(self) -> tuple[dict[str, str], dict[str, float]]:
        now = time.monotonic()
        with self._lock:
            states = {name: state for name, (state, _) in self._state.items()}
            states.update({alias: states[engine] for alias, engine in self._aliases.items()})
            ready_in = {
                name: round(max(0.0, self._load_s[name] - (now - since)), 1)
                for name, (state, since) in self._state.items()
                if state == STARTING and name in self._load_s
            }
        return states, ready_in


class TaskTable:
    def __init__(
        self,
        engine: LocalGlobusEngine,
        preheat: list[dict[str, Any]],
        *,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._engine = engine
        self._workers = engine.workers
        self._preheat = preheat
        self.models = ModelStates(known or {}, preheat)
        self.warmed = threading.Event()
        # task id → (the task's own future, when it was submitted)
        self._tasks: dict[str, tuple[Future[Any], float]] = {}
        self.runs: dict[str, int] = {}
        self.spans: dict[str, list[float | None]] = {}
        self.lost = 0
        self._lock = threading.Lock()

    def _warm_tasks(self, config: dict[str, Any]) -> list[Future[Any]]:
        """One ``warm`` task per worker: idle workers each take one and load the model."""
        task = self._engine.pack("warm", [{"engine": config}], {})
        return [self._engine.submit(task) for _ in range(self._workers)]

    def warm(self) -> None:
        """Start the engine and load the preheat models (``/health`` says 200 after)."""
        self._engine.start()
        loads = {str(config.get("model")): self._warm_tasks(config) for config in self._preheat}
        self._engine.wait_for_workers(WORKERS_START_S)
        for name, futures in loads.items():
            errors = [f.exception() for f in futures]
            if any(e is None for e in errors):
                # Not timed: the preheat also starts the workers, which a later load does not.
                self.models.loaded(name, timed=False)
                continue
            why = next((_why(e) for e in errors if e is not None), "not loaded")
            print(f"preheat of {name} failed: {why}; unavailable", file=sys.stderr, flush=True)
            self.models.failed(name, RuntimeError(f"preheat of {name} failed: {why}"))
        self.warmed.set()

    def start_load(self, config: dict[str, Any]) -> Future[Any]:
        """Load a model in every idle worker unless it is hot or loading; its ready future."""
        name = str(config.get("model"))
        ready, start = self.models.begin(name, config)
        if not start:
            return ready
        loads = self._warm_tasks(config)
        left = [len(loads)]

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                self.models.loaded(name, f.result())
                return
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                print(f"load of {name} failed: {_why(exc)}", file=sys.stderr, flush=True)
                self.models.failed(name, exc)

        for load in loads:
            load.add_done_callback(done)
        return ready

    def submit(self, function_id: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        """The task's id. Raises ``SubmissionTooLargeError`` (over the limit: nothing runs) and
        ``KeyError`` (no such function here)."""
        name = function_id.split(":", 1)[-1]
        first = args[0] if args else None
        key = first.get("request_id") if isinstance(first, dict) else None
        task_id = f"task-{key}" if key else f"task-{uuid.uuid4().hex}"
        engine = first.get("engine") if isinstance(first, dict) else None
        with self._lock:
            self._expire()
            existing = self._tasks.get(task_id)
            if existing is not None and not _was_lost(existing[0]):
                return task_id
        # Outside the lock: a large payload takes a while to serialize.
        packed = self._engine.pack(name, args, kwargs)
        with self._lock:
            existing = self._tasks.get(task_id)
            if existing is not None and not _was_lost(existing[0]):
                return task_id  # the same request, submitted meanwhile by another caller
            outer: Future[Any] = Future()
            self._tasks[task_id] = (outer, time.monotonic())
        if isinstance(engine, dict) and engine.get("model"):
            ready = self.start_load(engine)
            if name == "warm":
                # A warm-up task ends when the model is hot, whichever worker loaded it.
                with self._lock:
                    self.runs[task_id] = self.runs.get(task_id, 0) + 1
                _chain(ready, outer)
                return task_id
        with self._lock:
            self.runs[task_id] = self.runs.get(task_id, 0) + 1
            self.spans[task_id] = [time.time(), None]
        inner = self._engine.submit(packed)

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            with self._lock:
                # Stamped before the outcome is visible: a task submitted after it was seen
                # never appears to overlap it.
                if task_id in self.spans:
                    self.spans[task_id][1] = time.time()
                if _lost(exc):
                    self.lost += 1
            if exc is not None:
                print(f"{task_id} failed: {_why(exc)}", file=sys.stderr, flush=True)
                outer.set_exception(exc)
            else:
                outer.set_result(f.result())

        inner.add_done_callback(done)
        return task_id

    def state(self, task_id: str, wait_s: float) -> dict[str, Any] | None:
        with self._lock:
            entry = self._tasks.get(task_id)
        if entry is None:
            return None
        future = entry[0]
        try:
            result = future.result(timeout=wait_s)
        except TimeoutError:
            return {"status": "pending"}
        except Exception as exc:  # noqa: BLE001 - the remote exception is the task's result
            text, code = _failure(exc)
            return {"status": "failed", "exception": text, "code": code}
        return {"status": "success", "result": result}

    def _expire(self) -> None:
        cutoff = time.monotonic() - KEEP_FINISHED_S
        for tid in [t for t, (f, at) in self._tasks.items() if f.done() and at < cutoff]:
            del self._tasks[tid]
            self.runs.pop(tid, None)
            self.spans.pop(tid, None)

    def worker_pids(self) -> list[int]:
        return self._engine.worker_pids()

    def shutdown(self) -> None:
        # A worker may be mid-generation; nobody will collect its result, so stop it now.
        self._engine.shutdown()


def _chain(source: Future[Any], target: Future[Any]) -> None:
    def copy(f: Future[Any]) -> None:
        exc = f.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(f.result())

    source.add_done_callback(copy)


def _was_lost(future: Future[Any]) -> bool:
    return future.done() and _lost(future.exception())


def make_handler(table: TaskTable, token: str) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        # A client that stops sending mid-request does not hold a thread for ever.
        timeout = 120

        def _authorized(self) -> bool:
            given = (self.headers.get("Authorization") or "").encode()
            if hmac.compare_digest(given, expected):
                return True
            self.close_connection = True  # an unread body must not be parsed as a request
            self._send(401, {"error": "this endpoint needs the stack's token"})
            return False

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                # Say so, or a keep-alive client reuses the socket and races its close.
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path == "/health":
                models, ready_in_s = table.models.view()
                warm = table.warmed.is_set()
                body = {
                    "status": "ok" if warm else "starting",
                    "workers": table._workers,
                    "pids": table.worker_pids(),
                    "models": models,
                    "ready_in_s": ready_in_s,
                }
                self._send(200 if warm else 503, body)
            elif not self._authorized():
                return
            elif url.path == "/stats":
                with table._lock:
                    stats = {"runs": dict(table.runs), "lost": table.lost, "spans": table.spans}
                    self._send(200, stats)
            elif url.path.startswith("/tasks/"):
                wait = float(parse_qs(url.query).get("wait", ["0"])[0])
                state = table.state(url.path.removeprefix("/tasks/"), min(wait, 60.0))
                if state is None:
                    self._send(404, {"error": "unknown task"})
                else:
                    self._send(200, state)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            url = urlparse(self.path)
            if url.path != "/tasks":
                self._send(404, {"error": "not found"})
                return
            try:
                wait_s = min(float(parse_qs(url.query).get("wait", ["0"])[0]), 60.0)
                length = int(self.headers.get("Content-Length") or "")
                if not 0 < length <= MAX_BODY_BYTES:
                    raise ValueError(length)
                body = json.loads(self.rfile.read(length))
                function_id = str(body["function_id"])
                args, kwargs = list(body.get("args") or []), dict(body.get("kwargs") or {})
            except (ValueError, KeyError, TypeError) as exc:
                self.close_connection = True
                self._send(400, {"error": f"bad task: {type(exc).__name__}"})
                return
            try:
                task_id = table.submit(function_id, args, kwargs)
            except SubmissionTooLargeError as exc:
                # What the web service answers (the SDK raises it as a GlobusAPIError).
                too_large = {"code": PAYLOAD_TOO_LARGE, "message": str(exc)}
                self._send(
                    413,
                    {**too_large, "size_bytes": exc.size_bytes, "limit_bytes": exc.limit_bytes},
                )
                return
            except KeyError:
                self._send(404, {"error": f"no function {function_id} on this endpoint"})
                return
            # ?wait=S: submit and collect in one round trip when the task finishes within S.
            state = table.state(task_id, wait_s) if wait_s > 0 else {"status": "pending"}
            self._send(200, {"task_id": task_id, **(state or {"status": "pending"})})

    return Handler


def serve(
    host: str,
    port: int,
    engine: LocalGlobusEngine,
    preheat: list[dict[str, Any]],
    token: str,
    known: dict[str, dict[str, Any]] | None = None,
) -> None:
    table = TaskTable(engine, preheat, known=known)
    server = ThreadingHTTPServer((host, port), make_handler(table, token))
    server.daemon_threads = True
    # Listening while the workers start and load: the poller sees the models starting.
    threading.Thread(target=_warm_or_exit, args=(table,), daemon=True).start()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        table.shutdown()


def _warm_or_exit(table: TaskTable) -> None:
    try:
        table.warm()
    except Exception as exc:  # noqa: BLE001 - a worker that cannot start: the endpoint is broken
        print(f"workers did not start: {exc}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    from chalicelib.registry import Registry
    from chalicelib.settings import Settings

    parser = argparse.ArgumentParser(description="FIRST local compute endpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--no-preheat", action="store_true")
    parser.add_argument("--name", help="the registry endpoint this serves (preheats its models)")
    parser.add_argument(
        "--cold", action="append", default=[], metavar="MODEL", help="serve MODEL, not preheated"
    )
    parser.add_argument(
        "--functions",
        default="hpc_functions",
        metavar="MODULE",
        help="the module whose FUNCTIONS are registered here (by reference, as Globus does)",
    )
    parser.add_argument(
        "--worker-init",
        default="",
        metavar="SHELL",
        help="run before the worker pool starts, as a site's worker_init (after the defaults)",
    )
    parser.add_argument("--max-retries-on-system-failure", type=int, default=0)
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="the engine's run directory: logs, submit scripts (default: FIRST_HOME/compute/NAME,"
        " or a temporary one removed at exit)",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        parser.error(f"{TOKEN_ENV} must hold the stack's secret (16+ characters)")
    settings = Settings()
    env = {**os.environ, "FIRST_HOME": str(settings.home)}
    registry = Registry.load(settings.registry_file, env)
    known = {
        m.model: m.engine
        for e in registry.endpoints
        if e.executor == "local" and args.name in (None, e.name)
        for m in e.models
    }
    # One load per engine, however many registry models it serves.
    engines = {json.dumps(c, sort_keys=True): c for m, c in known.items() if m not in args.cold}
    preheat = [] if args.no_preheat else list(engines.values())
    scratch = None if args.run_dir or args.name else tempfile.mkdtemp(prefix="first-endpoint-")
    run_dir = args.run_dir or Path(scratch or settings.home / "compute" / str(args.name))
    engine = LocalGlobusEngine(
        workers=args.workers,
        run_dir=run_dir.resolve(),
        functions=dict(importlib.import_module(args.functions).FUNCTIONS),
        submission_limit_bytes=settings.compute_submit_limit_bytes,
        result_limit_bytes=settings.compute_result_limit_bytes,
        max_retries_on_system_failure=args.max_retries_on_system_failure,
        worker_init=args.worker_init,
    )
    try:
        serve(args.host, args.port, engine, preheat, token, known)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
