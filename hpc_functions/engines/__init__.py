"""The one entry point the HPC functions call, and the engines they find warm.

``run_task`` runs one task on the engine its config names; the engines themselves are built and
kept warm by ``hpc_functions.engines.warm`` (``get_engine``, ``warm_engines``, re-exported here).
"""

from __future__ import annotations

import time
from typing import Any

from hpc_functions.engines.base import Engine, EngineError, EngineUnavailableError
from hpc_functions.engines.warm import get_engine, warm_engines

__all__ = [
    "Engine",
    "EngineError",
    "EngineUnavailableError",
    "get_engine",
    "run_task",
    "warm_engines",
]

TASK_KINDS = ("chat_completions", "completions", "embeddings")


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
