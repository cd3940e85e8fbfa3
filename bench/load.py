"""Many concurrent clients on the running local stack: does anything collapse?

    python -m bench.load [--clients 32 256] [--requests-per-client 3] [--max-tokens 1]

Each client is a thread with its own OpenAI SDK client (its own connection, as separate users'
programs would have), sending chat requests back to back with a 60 s client timeout and no
retries. For each level: throughput, latency p50/p99/max, the answers by status (200, 504 with
the request id, anything else, client timeouts), and an audit: every 504's request is fetched
by id until it is completed, and each request ran on the engine exactly once.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import requests
from openai import OpenAI

from bench.common import (
    apply_env,
    aws_calls,
    cpu_snapshot,
    engine_runs,
    local_stack,
    percentile,
    stack_pids,
    write_result,
)
from bench.interactive import cpu_per_request

MODEL = "first/tiny-chat"
CLIENT_TIMEOUT_S = 60.0


def client_run(env: dict[str, str], n: int, max_tokens: int) -> list[dict[str, Any]]:
    client = OpenAI(
        base_url=env["OPENAI_BASE_URL"],
        api_key=env["OPENAI_API_KEY"],
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    out = []
    for i in range(n):
        start = time.perf_counter()
        entry: dict[str, Any] = {}
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Hello number {i}"}],
                max_tokens=max_tokens,
            )
            entry.update(status=200, request_id=raw.headers["x-request-id"])
        except openai.APIStatusError as exc:
            entry.update(
                status=exc.status_code, request_id=exc.response.headers.get("x-request-id")
            )
        except openai.APITimeoutError:
            entry.update(status="client timeout")
        except openai.APIConnectionError as exc:
            entry.update(status=f"connection error: {type(exc.__cause__).__name__}")
        entry["ms"] = (time.perf_counter() - start) * 1000
        out.append(entry)
    client.close()
    return out


def settle(env: dict[str, str], request_ids: list[str], timeout_s: float = 120.0) -> int:
    """How many of these requests never completed (fetched by id until done or timeout)."""
    headers = {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"}
    pending = set(request_ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for rid in list(pending):
            url = f"{env['OPENAI_BASE_URL']}/requests/{rid}"
            if requests.get(url, headers=headers, timeout=10).json().get("status") == "completed":
                pending.discard(rid)
        time.sleep(1.0)
    return len(pending)


def level(env: dict[str, str], clients: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    pids = {**stack_pids(env), "load-generator": os.getpid()}
    aws_calls(env["AWS_ENDPOINT_URL"], reset=True)
    cpu_before = cpu_snapshot(pids)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda _: client_run(env, per_client, max_tokens), range(clients)))
    wall = time.perf_counter() - start
    cpu_after = cpu_snapshot(pids)
    calls = aws_calls(env["AWS_ENDPOINT_URL"])
    results = [r for run in runs for r in run]
    statuses = Counter(str(r["status"]) for r in results)
    timed_out = [r["request_id"] for r in results if r["status"] == 504 and r.get("request_id")]
    ok_ids = [r["request_id"] for r in results if r["status"] == 200]
    ms = [r["ms"] for r in results]
    runs_by_task = engine_runs(env)
    return {
        "clients": clients,
        "requests": len(results),
        "completed_per_s": round(statuses.get("200", 0) / wall, 1),
        "ms_p50": round(percentile(ms, 50)),
        "ms_p99": round(percentile(ms, 99)),
        "ms_max": round(max(ms)),
        "statuses": dict(statuses),
        "504_without_id": sum(1 for r in results if r["status"] == 504 and not r.get("request_id")),
        "504_never_completed": settle(env, timed_out),
        "aws_calls_per_request": {
            k: round(v / len(results), 2) for k, v in sorted(calls["by_operation"].items())
        },
        "cpu_ms_per_request": cpu_per_request(cpu_before, cpu_after, len(results)),
        "engine_runs_not_once": sum(
            1 for rid in ok_ids + timed_out if runs_by_task.get(f"task-{rid}", 0) != 1
        ),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[32, 256])
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=1)
    args = p.parse_args(argv)
    with local_stack() as env:
        apply_env(env)
        level(env, 4, 2, args.max_tokens)  # warm
        out = [level(env, c, args.requests_per_client, args.max_tokens) for c in args.clients]
    print("| clients | requests | completed/s | p50 ms | p99 ms | max ms | answers | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        print(
            f"| {r['clients']} | {r['requests']} | {r['completed_per_s']} | {r['ms_p50']} | "
            f"{r['ms_p99']} | {r['ms_max']} | {r['statuses']} | {r['504_never_completed']} |"
        )
    for r in out:
        print(f"CPU ms per request at {r['clients']} clients: {r['cpu_ms_per_request']}")
        print(f"AWS calls per request at {r['clients']} clients: {r['aws_calls_per_request']}")
    command = (
        f"python -m bench.load --clients {' '.join(map(str, args.clients))}"
        f" --requests-per-client {args.requests_per_client} --max-tokens {args.max_tokens}"
    )
    write_result("load", command, {"levels": out})


if __name__ == "__main__":
    main()
