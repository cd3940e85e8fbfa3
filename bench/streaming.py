"""Streaming over the WebSocket API: what the gateway adds to time-to-first-token, how many relay
pushes 100 tokens cost, and chunk throughput with 16 streams at once.

    python -m bench.streaming [--requests 30] [--max-tokens 64] [--concurrency 16]

TTFT added = the client's time from sending its request to its first content chunk, minus the
engine's own first-token time (from the task's start to its first token: the ``done`` frame's
timing). Uses the ``make up`` stack, or starts one. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

from bench.common import local_stack
from first_cli.client import StreamClient

MODEL = "first/tiny-chat"
HELLO = [{"role": "user", "content": "Hello there"}]


def one(client: StreamClient, max_tokens: int) -> dict[str, Any]:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": max_tokens, "temperature": 0}
    sent = time.time()
    first: float | None = None
    chunks = 0
    done: dict[str, Any] = {}
    for frame in client.frames("chat.completions", body):
        if frame["type"] == "chunk":
            chunks += 1
            delta = frame["data"]["choices"][0].get("delta") or {}
            if first is None and delta.get("content"):
                first = time.time()
        elif frame["type"] == "done":
            done = frame
        else:
            raise RuntimeError(json.dumps(frame))
    timing = done["timing"]
    assert first is not None
    engine_ttft = timing["first_token_at"] - timing["started_at"]
    return {
        "ttft_ms": (first - sent) * 1000,
        "added_ms": (first - sent - engine_ttft) * 1000,
        "engine_ttft_ms": engine_ttft * 1000,
        "pushes": timing["pushes"],
        "tokens": done["usage"]["completion_tokens"],
        "chunks": chunks,
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with local_stack() as env:
        ws_url, key = env["FIRST_WS_URL"], env["OPENAI_API_KEY"]
        with StreamClient(ws_url, key) as client:
            one(client, 4)  # warm: connection, engines, Lambda-style caches
            runs = [one(client, args.max_tokens) for _ in range(args.requests)]
        added = [r["added_ms"] for r in runs]
        print(f"sequential streams: {len(runs)} × {args.max_tokens} tokens")
        print(
            f"  TTFT added by the gateway  p50 {pct(added, 50):.1f} ms  p90 {pct(added, 90):.1f} ms"
            f"  (client TTFT p50 {pct([r['ttft_ms'] for r in runs], 50):.1f} ms; engine's own "
            f"p50 {pct([r['engine_ttft_ms'] for r in runs], 50):.1f} ms)"
        )
        per_100 = 100 * sum(r["pushes"] for r in runs) / sum(r["tokens"] for r in runs)
        print(f"  relay pushes per 100 tokens  {per_100:.1f}")

        results: list[dict[str, Any]] = []
        lock = threading.Lock()

        def worker() -> None:
            with StreamClient(ws_url, key) as c:
                r = one(c, args.max_tokens)
            with lock:
                results.append(r)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        chunks = sum(r["chunks"] for r in results)
        tokens = sum(r["tokens"] for r in results)
        print(f"{args.concurrency} concurrent streams × {args.max_tokens} tokens in {wall:.2f} s")
        print(
            f"  {chunks / wall:.0f} chunk frames/s, {tokens / wall:.0f} tokens/s delivered; "
            f"TTFT added p50 {statistics.median(r['added_ms'] for r in results):.0f} ms"
        )


if __name__ == "__main__":
    main()
