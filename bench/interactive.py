"""Interactive path overhead and throughput, through the running local stack.

    python -m bench.interactive [--requests 200] [--concurrency 1 32] [--max-tokens 8 256]

For each concurrency: end-to-end latency seen by the OpenAI SDK minus the engine's own time
(``x-first-engine-time-ms``) = what the gateway adds (p50/p99); requests/s; AWS API calls per
request (the embedded moto server's counter); and a loss/duplicate audit (every request
completed exactly once, its engine run once). Uses the stack from ``make up`` when it is up,
else starts one for the run.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

MODEL = "first/tiny-chat"
MESSAGES = [{"role": "user", "content": "Summarise the benefits of federated inference."}]


def one(client: OpenAI, max_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=max_tokens, temperature=0
    )
    total_ms = (time.perf_counter() - start) * 1000
    completion = raw.parse()
    engine_ms = float(raw.headers["x-first-engine-time-ms"])
    return {
        "request_id": raw.headers["x-request-id"],
        "total_ms": total_ms,
        "engine_ms": engine_ms,
        "added_ms": total_ms - engine_ms,
        "tokens": completion.usage.completion_tokens if completion.usage else 0,
    }


def phase(env: dict[str, str], concurrency: int, n: int, max_tokens: int) -> dict[str, Any]:
    client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
    for _ in range(min(4, n)):  # warm connections and engines
        one(client, max_tokens)
    aws = env["AWS_ENDPOINT_URL"]
    pids = stack_pids(env)
    aws_calls(aws, reset=True)
    cpu_before = cpu_snapshot(pids)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one(client, max_tokens), range(n)))
    wall = time.perf_counter() - start
    cpu_after = cpu_snapshot(pids)
    calls = aws_calls(aws)
    ids = [r["request_id"] for r in results]
    runs = engine_runs(env)
    runs_per_request = [runs.get(f"task-{i}", 0) for i in ids]
    added = [r["added_ms"] for r in results]
    return {
        "concurrency": concurrency,
        "requests": n,
        "max_tokens": max_tokens,
        "requests_per_s": round(n / wall, 1),
        "added_ms_p50": round(percentile(added, 50), 1),
        "added_ms_p99": round(percentile(added, 99), 1),
        "engine_ms_p50": round(percentile([r["engine_ms"] for r in results], 50), 1),
        "total_ms_p50": round(percentile([r["total_ms"] for r in results], 50), 1),
        "aws_calls_per_request": round(calls["total"] / n, 2),
        "aws_bytes_per_request": round((calls["bytes_in"] + calls["bytes_out"]) / n),
        "aws_calls_by_operation": {
            k: round(v / n, 2) for k, v in sorted(calls["by_operation"].items())
        },
        # CPU milliseconds per request in each process (the engine workers summed).
        "cpu_ms_per_request": cpu_per_request(cpu_before, cpu_after, n),
        "lost": n - len(set(ids)),
        "engine_runs_not_once": sum(1 for r in runs_per_request if r != 1),
    }


def cpu_per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in before.keys() & after.keys():
        key = (
            "engine workers"
            if "-worker-" in name
            else "compute endpoints"
            if name.startswith("compute")
            else name
        )
        out[key] = out.get(key, 0.0) + (after[name] - before[name]) * 1000 / n
    return {k: round(v, 2) for k, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--max-tokens", type=int, nargs="+", default=[8])
    args = p.parse_args(argv)
    with local_stack() as env:
        apply_env(env)
        out = [phase(env, c, args.requests, t) for t in args.max_tokens for c in args.concurrency]
    print(
        "| concurrency | max_tokens | req/s | added p50 ms | added p99 ms | engine p50 ms"
        " | AWS calls/req | AWS bytes/req | lost | engine runs ≠ 1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out:
        print(
            f"| {r['concurrency']} | {r['max_tokens']} | {r['requests_per_s']} | "
            f"{r['added_ms_p50']} | {r['added_ms_p99']} | {r['engine_ms_p50']} | "
            f"{r['aws_calls_per_request']} | {r['aws_bytes_per_request']} | "
            f"{r['lost']} | {r['engine_runs_not_once']} |"
        )
    for r in out:
        print(f"calls per request at concurrency {r['concurrency']}: {r['aws_calls_by_operation']}")
        print(f"CPU ms per request at concurrency {r['concurrency']}: {r['cpu_ms_per_request']}")
    command = (
        f"python -m bench.interactive --requests {args.requests} --concurrency"
        f" {' '.join(map(str, args.concurrency))} --max-tokens {' '.join(map(str, args.max_tokens))}"
    )
    write_result("interactive", command, {"phases": out})


if __name__ == "__main__":
    main()
