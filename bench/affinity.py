"""Conversation affinity on the local stack's two endpoints: on vs off, side by side.

    python -m bench.affinity [--conversations 8] [--turns 4] [--concurrency 2]

A multi-turn, agent-like workload: each conversation starts from a long document (its own) and
resends itself every turn, growing by the answer and a new question. The same workload runs on
two fresh stacks (``FIRST_AFFINITY=true``, then ``false``) and the figures go side by side:

- hit rate: follow-up turns that ran on the endpoint of their conversation's first turn;
- time to first token: each request asks for one token (``max_tokens=1``), so its latency, as the
  client sees it, is queueing plus prefill plus that one token;
- prefill tokens computed: prompt tokens minus ``usage.prompt_tokens_details.cached_tokens``
  (the transformers engine's prefix cache is per worker process, and an endpoint's tasks go to
  any of its workers, so even a turn that stays home finds its prefix only on that worker).

Figures go to ``bench/results/affinity.json`` (``--no-save`` skips it), from which ``python -m
bench.report`` writes the table in docs/performance.md. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import percentile, write_result
from offline.background import BackgroundStack
from offline.stack import StackConfig

MODEL = "first/tiny-chat"
# Characters of each conversation's opening document (the tiny model's context is 2048 tokens).
DOCUMENT_CHARS = 1200


def document(i: int) -> str:
    words = [f"fact{i}-{j} about the river delta and its tides" for j in range(400)]
    return " ".join(words)[:DOCUMENT_CHARS]


def run_conversation(client: Any, i: int, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are agent {i}. Reference: {document(i)}"},
        {"role": "user", "content": "Summarise the reference."},
    ]
    out = []
    for t in range(turns):
        started = time.perf_counter()
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=1, temperature=0
        )
        latency_ms = (time.perf_counter() - started) * 1000
        answer = raw.parse()
        usage = answer.usage.model_dump() if answer.usage else {}
        details = usage.get("prompt_tokens_details") or {}
        out.append(
            {
                "endpoint": raw.headers.get("x-first-endpoint"),
                "latency_ms": latency_ms,
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "cached_tokens": int(details.get("cached_tokens") or 0),
            }
        )
        messages += [
            {"role": "assistant", "content": answer.choices[0].message.content or "ok"},
            {"role": "user", "content": f"Now question {t + 1}: what of fact{i}-{t}?"},
        ]
    return out


def measure(on: bool, conversations: int, turns: int, concurrency: int) -> dict[str, Any]:
    from openai import OpenAI

    with tempfile.TemporaryDirectory(prefix="first-affinity-") as home:
        config = StackConfig.on_free_ports(
            Path(home), extra_env={"FIRST_AFFINITY": "true" if on else "false"}
        )
        stack = BackgroundStack(config)
        try:
            stack.start()  # inside: a start cut short (^C) still stops what it started
            client = OpenAI(base_url=f"{config.api_url}/v1", api_key=stack.api_key, max_retries=0)
            run_conversation(client, 10_000, 1)  # warm both paths once
            with ThreadPoolExecutor(concurrency) as pool:
                runs = list(
                    pool.map(lambda i: run_conversation(client, i, turns), range(conversations))
                )
        finally:
            stack.stop()
    follow = [(run[0]["endpoint"], t) for run in runs for t in run[1:]]
    hits = sum(first == t["endpoint"] for first, t in follow)
    later = [t["latency_ms"] for _, t in follow]
    every = [t for run in runs for t in run]
    prompt = sum(t["prompt_tokens"] for t in every)
    cached = sum(t["cached_tokens"] for t in every)
    return {
        "affinity": "on" if on else "off",
        "requests": len(every),
        "hit_rate_pct": round(100 * hits / max(1, len(follow)), 1),
        "ttft_p50_ms": round(statistics.median(later), 1),
        "ttft_p90_ms": round(percentile(later, 90), 1),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_tokens": prompt - cached,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-save", action="store_true", help="print only: no result file")
    args = parser.parse_args(argv)
    rows = [measure(on, args.conversations, args.turns, args.concurrency) for on in (True, False)]
    print(f"{'affinity':<9} {'hit %':>6} {'TTFT p50':>9} {'p90':>8} {'prefill':>8} {'cached':>7}")
    for r in rows:
        print(
            f"{r['affinity']:<9} {r['hit_rate_pct']:>6} {r['ttft_p50_ms']:>9} {r['ttft_p90_ms']:>8}"
            f" {r['prefill_tokens']:>8} {r['cached_tokens']:>7}"
        )
    if not args.no_save:
        command = (
            f"python -m bench.affinity --conversations {args.conversations} --turns {args.turns}"
            f" --concurrency {args.concurrency}"
        )
        path = write_result(
            "affinity",
            command,
            {
                "conversations": args.conversations,
                "turns": args.turns,
                "concurrency": args.concurrency,
                "modes": rows,
            },
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
