"""Engines kept warm in the worker process, and the one entry point the HPC functions call.

A Globus Compute worker runs many tasks in one process; loading a model per task would cost
seconds to minutes, so each engine is built once per distinct config and reused. Engine modules
are imported only when their kind is first asked for: a vLLM node never imports torch here, and
the transformers engine never needs the vLLM adapter.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from hpc_functions.engines.base import Engine, EngineError, EngineUnavailableError

__all__ = [
    "Engine",
    "EngineError",
    "EngineUnavailableError",
    "get_engine",
    "run_task",
    "warm_engines",
]

TASK_KINDS = ("chat_completions", "completions", "embeddings")

_engines: dict[str, Engine] = {}
_served_names: dict[str, str] = {}
_load_locks: dict[str, threading.Lock] = {}
# Guards the three dicts above; held only briefly, never while a model loads.
_registry_lock = threading.Lock()


def _build(config: dict[str, Any]) -> Engine:
    kind = config.get("kind", "transformers")
    if kind == "transformers":
        from hpc_functions.engines.transformers_engine import TransformersEngine

        return TransformersEngine(config)
    if kind == "vllm":
        from hpc_functions.engines.vllm import VllmEngine

        return VllmEngine(config)
    raise EngineUnavailableError(f"unknown engine kind {kind!r}", param="engine")


def get_engine(config: dict[str, Any]) -> Engine:
    """The engine for ``config``, built on first use and cached for the life of the process.

    Two threads asking for the same config wait on one load (a model loaded twice could
    exhaust GPU memory); different configs load concurrently. A failed load is not cached, so a
    later task retries it.
    """
    key = json.dumps(config, sort_keys=True)
    with _registry_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:
        with _registry_lock:
            engine = _engines.get(key)
        if engine is not None:
            return engine
        engine = _build(config)
        with _registry_lock:
            _engines[key] = engine
            _served_names[key] = str(config.get("model", ""))
        return engine


def warm_engines() -> list[str]:
    """Served model names of the engines loaded in this process, in load order."""
    with _registry_lock:
        return list(dict.fromkeys(_served_names.values()))


def run_task(kind: str, task: dict[str, Any]) -> dict[str, Any]:
    """Run one task of ``kind`` and wrap the result as the gateway expects it.

    Returns ``{"response": ..., "engine_time_ms": ...}`` or, for a request the engine refuses,
    ``EngineError.to_result()``. Any other exception propagates: the gateway reports a crash
    as a 500, which a refusal must not look like. A large body arrives, and a large result
    leaves, by the task's presigned URLs (``hpc_functions.offload``).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")
    from hpc_functions.offload import fetch_body, store_result

    task = fetch_body(task)
    return store_result(task, _run(kind, task))


def _run(kind: str, task: dict[str, Any]) -> dict[str, Any]:
    if task.get("stream") and kind != "embeddings":
        # Chunks pushed to the gateway's relay as they are generated (hpc_functions.streaming).
        from hpc_functions.streaming import run_stream_task

        return run_stream_task(kind, task)
    try:
        engine = get_engine(task["engine"])
        method = getattr(engine, kind)
        started = time.perf_counter()
        response = method(task["body"])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
    except EngineError as exc:
        return exc.to_result()
    return {"response": response, "engine_time_ms": elapsed_ms}
