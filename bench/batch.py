"""Batch against interactive for the same lines, through the local stack (``make up``, or one
started for the run): wall time, lines/s, AWS API calls and bytes per line, and the peak memory
(VmHWM) of every process of the stack.

    python -m bench.batch [--lines 2000] [--max-tokens 8] [--interactive-lines 400] [--clients 4]
                          [--latency-requests 30] [--latency-batch-lines 2000] [--out FILE]

The interactive run sends ``--interactive-lines`` of the same lines one by one from ``--clients``
threads (the rate is per line, so a shorter run compares fairly). Then the latency of one
interactive request at a time: its p50 idle, and its p50 while a second batch
(``--latency-batch-lines``) runs (a run of its own, so its requests do not count in the first
batch's AWS calls). Figures go to docs/performance.md ("Batch"); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from openai import OpenAI

from bench.common import local_stack, stack_pids
from first_cli.batch import upload
from offline.background import BackgroundStack
from offline.stack import StackConfig, free_port

MODEL = "first/tiny-chat"


def aws(env: dict[str, str], reset: bool = False) -> dict[str, Any]:
    url = f"{env['AWS_ENDPOINT_URL']}/_first/calls"
    req = urllib.request.Request(url, method="DELETE" if reset else "GET")
    with urllib.request.urlopen(req) as r:  # noqa: S310 - loopback
        body = r.read()
    return json.loads(body) if body and not reset else {}


def peak_rss_mb(env: dict[str, str]) -> dict[str, float]:
    out = {}
    for name, pid in stack_pids(env).items():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


def body(i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Line {i}: say something."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def batch_file(n: int, max_tokens: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"l{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(i, max_tokens),
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def submit_and_wait(client: OpenAI, data: bytes) -> tuple[Any, int]:
    """The finished batch and how many times it was polled."""
    # Over the API's payload limit (a 50,000-line file is ~11 MB): by the presigned POST.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        path.write_bytes(data)
        file = upload(client, path)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    polls = 0
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(2.0)
        polls += 1
        batch = client.batches.retrieve(batch.id)
    return batch, polls


def run_batch(client: OpenAI, env: dict[str, str], n: int, max_tokens: int) -> dict[str, Any]:
    data = batch_file(n, max_tokens)
    aws(env, reset=True)
    started = time.perf_counter()
    batch, polls = submit_and_wait(client, data)
    wall_s = time.perf_counter() - started
    calls = aws(env)
    counts = batch.request_counts
    return {
        "status": batch.status,
        "lines": n,
        "completed": counts.completed if counts else None,
        "wall_s": round(wall_s, 1),
        "lines_per_s": round(n / wall_s, 1),
        "aws_calls": calls["total"],
        # The client's status polls (one GetItem each, plus auth) are not the batch's cost.
        "aws_calls_per_line": round((calls["total"] - 2 * polls) / n, 4),
        "aws_bytes_per_line": round((calls["bytes_in"] + calls["bytes_out"]) / n),
        "input_bytes": len(data),
    }


def run_interactive(
    client: OpenAI, env: dict[str, str], n: int, max_tokens: int, clients: int
) -> dict[str, Any]:
    aws(env, reset=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: client.chat.completions.create(**body(i, max_tokens)), range(n)))
    wall_s = time.perf_counter() - started
    calls = aws(env)
    return {
        "lines": n,
        "clients": clients,
        "wall_s": round(wall_s, 1),
        "lines_per_s": round(n / wall_s, 1),
        "aws_calls_per_line": round(calls["total"] / n, 2),
        "aws_bytes_per_line": round((calls["bytes_in"] + calls["bytes_out"]) / n),
    }


def latency_ms(client: OpenAI, i: int, max_tokens: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(**body(i, max_tokens))
    return (time.perf_counter() - started) * 1000


def run_latency(client: OpenAI, requests: int, batch_lines: int, max_tokens: int) -> dict[str, Any]:
    """Interactive p50, one request at a time: idle, then while a batch runs."""
    idle = [latency_ms(client, i, max_tokens) for i in range(requests)]
    during: list[float] = []
    done = threading.Event()

    def ask() -> None:
        i = 0
        while not done.is_set() and len(during) < 10 * requests:
            during.append(latency_ms(client, i, max_tokens))
            i += 1

    asker = threading.Thread(target=ask)
    started = time.perf_counter()
    # The batch first: its validation and first shard are under way before the requests.
    file = client.files.create(
        file=("latency.jsonl", io.BytesIO(batch_file(batch_lines, max_tokens))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while client.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.1)
    asker.start()
    while client.batches.retrieve(batch.id).status not in ("completed", "failed", "cancelled"):
        time.sleep(0.5)
    done.set()
    asker.join()
    idle_p50, during_p50 = statistics.median(idle), statistics.median(during)
    return {
        "requests_idle": len(idle),
        "requests_during_batch": len(during),
        "batch_lines": batch_lines,
        "batch_wall_s": round(time.perf_counter() - started, 1),
        "p50_idle_ms": round(idle_p50, 1),
        "p50_during_batch_ms": round(during_p50, 1),
        "p90_during_batch_ms": round(statistics.quantiles(during, n=10)[-1], 1),
        "ratio_p50": round(during_p50 / idle_p50, 2),
    }


@contextmanager
def fresh_stack(home: Path) -> Iterator[dict[str, str]]:
    """A stack of its own on free ports (``--fresh``: not the ``make up`` one, whose code may be
    older than this checkout's)."""
    ports = {f.name: free_port() for f in fields(StackConfig) if f.name.endswith("_port")}
    config = StackConfig(home=home, aws_url=f"http://127.0.0.1:{free_port()}", **ports)
    stack = BackgroundStack(config)
    try:
        stack.start()
        yield stack.env()
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=2000)
    p.add_argument("--interactive-lines", type=int, default=400)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--latency-requests", type=int, default=30)
    p.add_argument("--latency-batch-lines", type=int, default=2000, help="0: no latency run")
    p.add_argument("--fresh", action="store_true", help="start a stack of its own")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batch.json")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="first-bench-batch-"))
    with fresh_stack(home) if a.fresh else local_stack() as env:
        client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], timeout=120)
        batch = run_batch(client, env, a.lines, a.max_tokens)
        interactive = run_interactive(client, env, a.interactive_lines, a.max_tokens, a.clients)
        # Peak memory before the latency run: what this file size made it.
        rss = peak_rss_mb(env)
        latency = None
        if a.latency_batch_lines:
            latency = run_latency(client, a.latency_requests, a.latency_batch_lines, a.max_tokens)
        result = {
            "shard_lines": os.environ.get("FIRST_BATCH_SHARD_LINES", "default"),
            "batch": batch,
            "interactive": interactive,
            "batch_speedup": round(batch["lines_per_s"] / interactive["lines_per_s"], 2),
            "latency": latency,
            "peak_rss_mb": rss,
        }
    print(json.dumps(result, indent=1))
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
