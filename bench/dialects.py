"""The latency a Responses call and a Messages call add over the same chat call.

    python -m bench.dialects [--calls 50] [--max-tokens 1]

Against the running stack (``make up``), or one of its own. One round is the same prompt asked
four ways, one after another over plain HTTP with one keep-alive session: ``/v1/chat/completions``,
``/v1/responses`` (stored, the default), ``/v1/responses`` with ``store: false``, and
``/v1/messages``, each for ``max_tokens`` tokens; ``calls`` rounds, interleaved so that the load
of the machine weighs on every kind alike. The added latency of a kind is the median over the
rounds of (its call's time − the chat call's time in the same round): the dialect's parse, its
translation to chat and back, and for a stored response its two DynamoDB writes. Prints
figures, asserts nothing; writes ``bench/results/dialects.json``, from which
``python -m bench.report`` writes the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import requests

from bench.common import local_stack, percentile, write_result

MODEL = "first/tiny-chat"
PROMPT = "Hello"


def bodies(max_tokens: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each kind: (route, body), the same prompt and token budget."""
    chat = [{"role": "user", "content": PROMPT}]
    responses = {"model": MODEL, "input": PROMPT, "max_output_tokens": max_tokens}
    return {
        "chat": ("chat/completions", {"model": MODEL, "messages": chat, "max_tokens": max_tokens}),
        "responses": ("responses", responses),
        "responses, store false": ("responses", {**responses, "store": False}),
        "messages": ("messages", {"model": MODEL, "messages": chat, "max_tokens": max_tokens}),
    }


def call(session: requests.Session, api: str, route: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = session.post(f"{api}/{route}", json=body, timeout=60)
    elapsed_ms = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return elapsed_ms


def summary(times: dict[str, list[float]]) -> list[dict[str, Any]]:
    chat = times["chat"]
    out = []
    for kind, runs in times.items():
        added = [t - c for t, c in zip(runs, chat, strict=True)]
        out.append(
            {
                "kind": kind,
                "calls": len(runs),
                "p50_ms": round(statistics.median(runs), 1),
                "p90_ms": round(percentile(runs, 90), 1),
                "added_ms_p50": round(statistics.median(added), 1),
                "added_ms_p90": round(percentile(added, 90), 1),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=1, choices=range(1, 5))
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    kinds = bodies(args.max_tokens)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    with local_stack() as env:
        api = env["OPENAI_BASE_URL"].rstrip("/")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {env['OPENAI_API_KEY']}"
        for route, body in kinds.values():  # warm: the engine, the routes' first imports
            call(session, api, route, body)
        for _ in range(args.calls):
            for kind, (route, body) in kinds.items():
                times[kind].append(call(session, api, route, body))
    cases = summary(times)
    for case in cases:
        print(case, flush=True)
    if not args.no_save:
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m bench.dialects", *given])
        figures = {"max_tokens": args.max_tokens, "model": MODEL, "cases": cases}
        path = write_result("dialects", command, figures)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
