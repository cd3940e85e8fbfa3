"""Batch against interactive for the same lines, through the local stack (``make up``, or one
started for the run): wall time, lines/s, AWS API calls and bytes per line, and the peak memory
(VmHWM) of every process of the stack.

    python -m bench.batch [--lines 2000] [--max-tokens 8] [--interactive-lines 400] [--clients 4]

The interactive run sends ``--interactive-lines`` of the same lines one by one from ``--clients``
threads (the rate is per line, so a shorter run compares fairly). Figures go to
docs/performance.md ("Batch"); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
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


def run_batch(client: OpenAI, env: dict[str, str], n: int, max_tokens: int) -> dict[str, Any]:
    data = b"".join(
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
    aws(env, reset=True)
    started = time.perf_counter()
    file = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    polls = 0
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(2.0)
        polls += 1
        batch = client.batches.retrieve(batch.id)
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
    p.add_argument("--fresh", action="store_true", help="start a stack of its own")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="first-bench-batch-"))
    with fresh_stack(home) if a.fresh else local_stack() as env:
        client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], timeout=120)
        batch = run_batch(client, env, a.lines, a.max_tokens)
        interactive = run_interactive(client, env, a.interactive_lines, a.max_tokens, a.clients)
        result = {
            "batch": batch,
            "interactive": interactive,
            "batch_speedup": round(batch["lines_per_s"] / interactive["lines_per_s"], 2),
            "peak_rss_mb": peak_rss_mb(env),
        }
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / "batch.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
