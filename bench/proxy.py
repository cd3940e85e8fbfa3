"""What ``first proxy`` adds: the same calls through the OpenAI SDK, to the gateway and through the
proxy, on one local stack.

    python -m bench.proxy [--requests 200] [--streams 30] [--max-tokens 8] [--compare DIR]

The proxy runs as users run it (``first proxy``, its own process); ``--compare DIR`` runs the
proxy of another checkout (``git worktree add DIR main``) too, on the same stack, rows side by
side. Rows: ``GET /v1/models`` (no
engine: the proxy's forwarding cost stands out), a non-streamed chat completion (forwarded as
is), and a streamed one (the proxy over the WebSocket API against ``first_cli.client`` over the
same API, time to first content chunk and to the end). ``added`` = through the proxy minus
direct, p50 against p50; ``proxy CPU`` = the proxy process's CPU time per call. Starts a stack of its own on free ports. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openai import OpenAI

from bench.common import cpu_s, local_stack, percentile
from chalicelib.settings import REPO_ROOT
from first_cli.client import StreamClient
from offline.stack import free_port

MODEL = "first/tiny-chat"
HELLO = [{"role": "user", "content": "Hello there"}]


@contextmanager
def proxy_process(env: dict[str, str], root: Path) -> Iterator[tuple[str, int]]:
    """``first proxy`` of the checkout at ``root``, in a process of its own; its base URL and
    pid once it accepts connections."""
    port = free_port()
    cmd = [sys.executable, "-m", "first_cli.main", "proxy", "--port", str(port)]
    cmd += ["--gateway", env["OPENAI_BASE_URL"], "--ws-url", env["FIRST_WS_URL"]]
    # ``-m`` puts the working directory first on sys.path: that checkout's first_cli runs.
    proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONPATH": str(root)}, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("first proxy did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def timed(call: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(4, n)):  # warm connections and engines
        call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def sdk_stream(sdk: OpenAI, max_tokens: int) -> tuple[float, float]:
    """(ms to the first content chunk, ms to the end) of one streamed chat through the SDK."""
    start = time.perf_counter()
    first = 0.0
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000


def client_stream(client: StreamClient, max_tokens: int) -> tuple[float, float]:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    first = 0.0
    for frame in client.frames("chat.completions", body):
        if not first and frame["type"] == "chunk":
            delta = frame["data"]["choices"][0].get("delta") or {}
            if delta.get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000


def row(name: str, direct: list[float], proxied: list[float], cpu_ms: float) -> dict[str, Any]:
    d50, p50 = percentile(direct, 50), percentile(proxied, 50)
    return {
        "row": name,
        "direct_ms_p50": round(d50, 2),
        "proxy_ms_p50": round(p50, 2),
        "added_ms_p50": round(p50 - d50, 2),
        "proxy_ms_p99": round(percentile(proxied, 99), 2),
        "proxy_cpu_ms": round(cpu_ms, 2),
    }


def measure(env: dict[str, str], root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    key, n, tokens = env["OPENAI_API_KEY"], args.requests, args.max_tokens
    direct = OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=key, max_retries=0)
    chat = {"model": MODEL, "messages": HELLO, "max_tokens": tokens, "temperature": 0}
    with proxy_process(env, root) as (proxy_url, pid):
        proxied = OpenAI(base_url=proxy_url, api_key=key, max_retries=0)

        def cpu_ms_per(call: Callable[[], Any], count: int) -> tuple[Any, float]:
            before = cpu_s(pid)
            result = call()
            return result, (cpu_s(pid) - before) * 1000 / count

        base = timed(direct.models.list, n)
        through, cpu = cpu_ms_per(lambda: timed(proxied.models.list, n), n + min(4, n))
        out.append(row("GET /v1/models", base, through, cpu))
        base = timed(lambda: direct.chat.completions.create(**chat), n)
        through, cpu = cpu_ms_per(
            lambda: timed(lambda: proxied.chat.completions.create(**chat), n), n + min(4, n)
        )
        out.append(row(f"chat, max_tokens {tokens}", base, through, cpu))
        with StreamClient(env["FIRST_WS_URL"], key) as ws:
            ws_runs = [client_stream(ws, tokens) for _ in range(args.streams + 2)][2:]
        sdk_runs, cpu = cpu_ms_per(
            lambda: [sdk_stream(proxied, tokens) for _ in range(args.streams + 2)][2:],
            args.streams + 2,
        )
        out.append(
            row("stream: first chunk", [r[0] for r in ws_runs], [r[0] for r in sdk_runs], cpu)
        )
        out.append(row("stream: whole", [r[1] for r in ws_runs], [r[1] for r in sdk_runs], cpu))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--streams", type=int, default=30)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--compare", type=Path, help="another checkout whose proxy runs too")
    p.add_argument("--rounds", type=int, default=1, help="alternate the checkouts this often")
    args = p.parse_args(argv)
    roots = {"this": REPO_ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    out: list[dict[str, Any]] = []
    with local_stack(own=True) as env:
        for round_ in range(args.rounds):
            for name, root in roots.items():
                out += [{"proxy": name, "round": round_, **r} for r in measure(env, root, args)]
    print(
        "| proxy | round | call | direct p50 ms | through the proxy p50 ms | added p50 ms "
        "| proxy p99 ms | proxy CPU ms/call |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        print(
            f"| {r['proxy']} | {r['round']} | {r['row']} | {r['direct_ms_p50']} "
            f"| {r['proxy_ms_p50']} | {r['added_ms_p50']} | {r['proxy_ms_p99']} "
            f"| {r['proxy_cpu_ms']} |"
        )
    results = REPO_ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "proxy.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
