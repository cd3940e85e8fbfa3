"""What runs on the HPC node, behind Globus Compute.

Each public function here is registered with Globus Compute and is self-contained: every import
is inside the body, arguments and results are JSON-able dicts, and nothing from ``chalicelib`` or
``boto3`` is touched (the node has no AWS credentials). They survive
``globus_compute_sdk.serialize.ComputeSerializer`` and run from the deserialized form.

The task payload (built by the poller) is::

    {"request_id": str, "engine": {...engine config...}, "body": {...OpenAI request body...}}

and the result is either ``{"response": {...OpenAI object...}, "engine_time_ms": float}`` or,
for a request the engine refuses, ``{"error": {"message", "type", "param", "code"},
"status_code": int}``. Anything else (a crash) is raised and becomes a 500 at the gateway.
"""

from __future__ import annotations

from typing import Any


def chat_completions(task: dict[str, Any]) -> dict[str, Any]:
    """Run one OpenAI chat completion request on the node's engine."""
    from hpc_functions.engines import run_task

    return run_task("chat_completions", task)


def completions(task: dict[str, Any]) -> dict[str, Any]:
    """Run one OpenAI (legacy) completion request on the node's engine."""
    from hpc_functions.engines import run_task

    return run_task("completions", task)


def embeddings(task: dict[str, Any]) -> dict[str, Any]:
    """Run one OpenAI embeddings request on the node's engine."""
    from hpc_functions.engines import run_task

    return run_task("embeddings", task)


def health(task: dict[str, Any] | None = None) -> dict[str, Any]:
    """Liveness probe: which engines this worker holds warm."""
    from hpc_functions.engines import warm_engines

    return {"status": "ok", "engines": warm_engines()}


def warm(task: dict[str, Any]) -> dict[str, Any]:
    """Load the engine ``task["engine"]`` in this worker (``POST /v1/models/{model}/warm``, or a
    request queued for a cold model): later tasks for that model find it loaded."""
    import time

    from hpc_functions.engines import get_engine, warm_engines

    started = time.perf_counter()
    get_engine(task["engine"])
    return {
        "status": "hot",
        "model": task["engine"].get("model"),
        "load_ms": round((time.perf_counter() - started) * 1000, 1),
        "engines": warm_engines(),
    }


def batch_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Run one shard of a batch in throughput mode (``hpc_functions.batch``)."""
    from hpc_functions.batch import run_shard

    return run_shard(task)


def count_objects(task: dict[str, Any]) -> dict[str, Any]:
    """A job: count and measure the objects of an image (``hpc_functions.science``)."""
    from hpc_functions.jobs import run_job
    from hpc_functions.science import count_objects_job

    return run_job(count_objects_job, task)


def sleep_steps(task: dict[str, Any]) -> dict[str, Any]:
    """A job: sleep in steps with progress and cancel (tests, ``bench/jobs.py``)."""
    from hpc_functions.jobs import run_job
    from hpc_functions.science import sleep_steps_job

    return run_job(sleep_steps_job, task)


FUNCTIONS = {
    "chat_completions": chat_completions,
    "completions": completions,
    "embeddings": embeddings,
    "health": health,
    "warm": warm,
    "batch_shard": batch_shard,
    "count_objects": count_objects,
    "sleep_steps": sleep_steps,
}
