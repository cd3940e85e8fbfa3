"""Federation on the local stack's two clusters: scaling, routing cost, fair share.

    python -m bench.federation [--requests 120] [--concurrency 16] [--max-tokens 32]

1. Throughput with both clusters (local-a: capacity 4, two engine workers; local-b: capacity 2,
   one worker), then with local-b stopped (`first local endpoint stop local-b`): the scaling
   ratio. AWS calls per request by operation for each (routing adds the slot transactions).
2. Fair share: one user floods (`--flood` requests, 32 at a time); a second user's single
   request, sent once the flood is queued, is timed against the same request on an idle stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openai import OpenAI

from bench.common import apply_env, aws_calls, local_stack, percentile
from chalicelib.settings import REPO_ROOT

MODEL = "first/tiny-chat"


def first(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "first_cli.main", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def ask(client: OpenAI, i: int, max_tokens: int) -> float:
    start = time.perf_counter()
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Hello {i}"}], max_tokens=max_tokens
    )
    return (time.perf_counter() - start) * 1000


def throughput(env: dict[str, str], n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    client = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
    for i in range(4):
        ask(client, i, max_tokens)
    aws_calls(env["AWS_ENDPOINT_URL"], reset=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ms = list(pool.map(lambda i: ask(client, i, max_tokens), range(n)))
    wall = time.perf_counter() - start
    calls = aws_calls(env["AWS_ENDPOINT_URL"])
    return {
        "requests_per_s": round(n / wall, 1),
        "ms_p50": round(percentile(ms, 50)),
        "aws_calls_per_request": round(calls["total"] / n, 2),
        "by_operation": {k: round(v / n, 2) for k, v in sorted(calls["by_operation"].items())},
    }


def fair_share(env: dict[str, str], flood: int, max_tokens: int) -> dict[str, Any]:
    flooder = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
    key = first(env, "keys", "create", "--user", "bench-quiet-user")
    quiet = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=key, max_retries=0, timeout=120)
    idle = [ask(quiet, i, max_tokens) for i in range(5)]
    done = threading.Event()

    def flood_all() -> None:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: ask(flooder, i, max_tokens), range(flood)))
        done.set()

    threading.Thread(target=flood_all, daemon=True).start()
    time.sleep(2.0)  # the flood is queued ahead of it
    during = ask(quiet, 99, max_tokens)
    done.wait(600)
    return {
        "flood": flood,
        "quiet_idle_ms_p50": round(percentile(idle, 50)),
        "quiet_during_flood_ms": round(during),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--flood", type=int, default=100)
    args = p.parse_args(argv)
    with local_stack() as env:
        apply_env(env)
        both = throughput(env, args.requests, args.concurrency, args.max_tokens)
        first(env, "local", "endpoint", "stop", "local-b")
        try:
            one = throughput(env, args.requests, args.concurrency, args.max_tokens)
        finally:
            first(env, "local", "endpoint", "start", "local-b")
        share = fair_share(env, args.flood, args.max_tokens)
    out = {"two_clusters": both, "one_cluster": one, "fair_share": share}
    out["scaling_ratio"] = round(both["requests_per_s"] / one["requests_per_s"], 2)
    print(json.dumps(out, indent=2))
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "federation.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
