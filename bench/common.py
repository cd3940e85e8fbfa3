"""Shared helpers: find (or start) the local stack, read the AWS call counter, percentiles."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT
from offline.background import BackgroundStack
from offline.stack import StackConfig, free_port

ENV_FILE = REPO_ROOT / ".first" / "local.env"


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@contextmanager
def local_stack(home: Path | None = None) -> Iterator[dict[str, str]]:
    """The running stack's environment (``make up``), or a fresh one for the benchmark's run."""
    if ENV_FILE.exists():
        yield read_env(ENV_FILE)
        return
    config = StackConfig(
        home=home or REPO_ROOT / ".first" / "bench",
        aws_url=f"http://127.0.0.1:{free_port()}",
        api_port=free_port(),
        compute_port=free_port(),
    )
    stack = BackgroundStack(config)
    try:
        stack.start()
        yield read_env(config.env_file)
    finally:
        stack.stop()


def aws_calls(endpoint: str, reset: bool = False) -> dict[str, Any]:
    """The embedded moto server's call counter (absent on LocalStack)."""
    req = urllib.request.Request(f"{endpoint}/_first/calls", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())  # type: ignore[no-any-return]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def apply_env(env: dict[str, str]) -> None:
    os.environ.update(env)
