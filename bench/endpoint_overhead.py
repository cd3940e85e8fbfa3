"""What the local compute endpoint costs per task, against calling ``hpc_functions`` directly.

    python -m bench.endpoint_overhead [--tasks 100] [--workers 1]

Starts one ``offline.compute_endpoint`` (no preheat) and times: its start (until ``/health``
says 200), then ``--tasks`` sequential one-round-trip submissions (``POST /tasks?wait=``) of
``health`` (no model: the machinery alone) and of a 4-token chat on the tiny model (warm), and
the same two functions called in this process. The difference is the endpoint's per-task
overhead: HTTP, the SDK's packing, the engine's interchange and worker pool, the unpacking.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import percentile
from chalicelib.settings import REPO_ROOT
from offline.stack import free_port

TOKEN = "bench-token-0123456789abcdef"


def chat(engine: dict[str, Any], i: int) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    return {"request_id": f"bench-{i}-{time.time_ns()}", "engine": engine, "body": body}


def timed(call: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def through_endpoint(engine: dict[str, Any], n: int, workers: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.compute_endpoint", "--port", str(port)]
        + ["--workers", str(workers), "--no-preheat"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "FIRST_LOCAL_ENDPOINT_TOKEN": TOKEN},
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the endpoint exited with {proc.returncode}")
            time.sleep(0.05)
        start_s = time.perf_counter() - started
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {TOKEN}"

        def run(function: str, arg: dict[str, Any]) -> Any:
            task = {"function_id": f"local:{function}", "args": [arg]}
            done = http.post(f"{url}/tasks", json=task, params={"wait": 60}, timeout=70).json()
            assert done["status"] == "success", done
            return done["result"]

        for _ in range(workers):
            run("warm", {"engine": engine})
        return {
            "start_s": round(start_s, 2),
            "health_ms": timed(lambda i: run("health", {}), n),
            "chat_ms": timed(lambda i: run("chat_completions", chat(engine, i)), n),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def in_process(engine: dict[str, Any], n: int) -> dict[str, Any]:
    import torch

    import hpc_functions

    torch.set_num_threads(1)  # as each endpoint worker runs
    hpc_functions.warm({"engine": engine})
    return {
        "health_ms": timed(lambda i: hpc_functions.health({}), n),
        "chat_ms": timed(lambda i: hpc_functions.chat_completions(chat(engine, i)), n),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    from hpc_functions.build_tiny_model import build

    path = build(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    engine = {"kind": "transformers", "model": "first/tiny-chat", "path": str(path)}
    served = through_endpoint(engine, args.tasks, args.workers)
    direct = in_process(engine, args.tasks)
    print(f"endpoint start to /health 200: {served['start_s']} s ({args.workers} worker(s))")
    print("| task | direct p50 ms | endpoint p50 ms | endpoint p99 ms | overhead p50 ms |")
    print("|---|---|---|---|---|")
    for name in ("health", "chat"):
        d = statistics.median(direct[f"{name}_ms"])
        e = served[f"{name}_ms"]
        print(
            f"| {name} | {d:.2f} | {statistics.median(e):.2f} | {percentile(e, 99):.2f} |"
            f" {statistics.median(e) - d:.2f} |"
        )


if __name__ == "__main__":
    main()
