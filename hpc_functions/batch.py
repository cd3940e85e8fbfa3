"""One batch shard on the HPC node: fetch the lines, run them in throughput mode, upload the
output and error lines. Self-contained like every HPC function: the node holds no AWS
credentials, so the shard travels by presigned S3 URLs and the task payload stays small.

Task::

    {"request_id": "<batch id>-shard-<n>-try-<k>", "engine": {...}, "function": "chat_completions",
     "batch_id": str, "shard": int, "input_url": GET url, "output_url": PUT url,
     "error_url": PUT url, "max_rows": int}

Result: ``{"completed": n, "failed": n, "lines": n, "engine_time_ms": float, "prompt_tokens": n,
"completion_tokens": n}`` (token sums over the completed lines, for the usage record). Output lines are
OpenAI's batch output format; a line the engine refuses goes to the error object with its
status code and OpenAI error body.
"""

from __future__ import annotations

from typing import Any


def run_shard(task: dict[str, Any]) -> dict[str, Any]:
    import json
    import time
    import uuid

    import requests

    from hpc_functions.engines import get_engine
    from hpc_functions.engines.base import EngineError
    from hpc_functions.engines.throughput import run_many

    got = requests.get(task["input_url"], timeout=300)
    got.raise_for_status()
    lines = [json.loads(raw) for raw in got.content.splitlines() if raw.strip()]
    kind = str(task["function"])
    started = time.perf_counter()
    try:
        engine = get_engine(task["engine"])
    except EngineError as exc:
        outcomes: list[Any] = [exc] * len(lines)
    else:
        outcomes = run_many(
            engine, kind, [line["body"] for line in lines], max_rows=int(task.get("max_rows", 32))
        )
    engine_time_ms = (time.perf_counter() - started) * 1000.0
    output: list[str] = []
    errors: list[str] = []
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    for line, outcome in zip(lines, outcomes, strict=True):
        request_id = f"req_{uuid.uuid4().hex}"
        if isinstance(outcome, EngineError):
            result = outcome.to_result()
            response = {
                "status_code": result["status_code"],
                "request_id": request_id,
                "body": {"error": result["error"]},
            }
            target = errors
        else:
            response = {"status_code": 200, "request_id": request_id, "body": outcome}
            usage = outcome.get("usage") if isinstance(outcome, dict) else None
            for key in tokens:
                tokens[key] += int((usage or {}).get(key) or 0)
            target = output
        record = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": line["custom_id"],
            "response": response,
            "error": None,
        }
        target.append(json.dumps(record, separators=(",", ":")) + "\n")
    for url, chunk in ((task["output_url"], output), (task["error_url"], errors)):
        put = requests.put(url, data="".join(chunk).encode(), timeout=300)
        put.raise_for_status()
    return {
        "completed": len(output),
        "failed": len(errors),
        "lines": len(lines),
        "engine_time_ms": engine_time_ms,
        **tokens,
    }
