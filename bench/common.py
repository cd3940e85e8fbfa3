"""Shared helpers: find (or start) the local stack, read the AWS call counter, percentiles."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT
from offline.background import BackgroundStack
from offline.stack import StackConfig

ENV_FILE = REPO_ROOT / ".first" / "local.env"
# Committed: README.md's and docs/performance.md's tables are rendered from these (bench.report).
RESULTS = REPO_ROOT / "bench" / "results"
# Not the code measured: the result files and documents (a run rewrites some of them).
_NOT_CODE = ("bench/results", "*.md")


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@contextmanager
def local_stack(home: Path | None = None, *, own: bool = False) -> Iterator[dict[str, str]]:
    """The running stack's environment (``make up``), or a fresh one for the benchmark's run
    (always, with ``own``: a benchmark that kills processes never uses someone's stack)."""
    if ENV_FILE.exists() and not own:
        yield read_env(ENV_FILE)
        return
    config = StackConfig.on_free_ports(home or REPO_ROOT / ".first" / "bench")
    stack = BackgroundStack(config)
    try:
        stack.start()
        yield read_env(config.env_file)
    finally:
        stack.stop()


def stack_pids(env: dict[str, str]) -> dict[str, int]:
    """Each process of the stack (from its ``stack.json``), the compute workers included: the
    engine's workers (from ``/health``) as ``compute-X-worker-N``; its interchange (the
    endpoint's child) and the workers' pool manager as ``compute-X-engine-N``."""
    import requests

    state = json.loads((Path(env["FIRST_HOME"]) / "stack.json").read_text())
    pids = {name: int(pid) for name, pid in state["pids"].items()}
    for name in [n for n in pids if n.startswith("compute")]:
        url = state["compute_urls"][name.removeprefix("compute-")]
        workers = requests.get(f"{url}/health", timeout=5).json()["pids"]
        managers = {parent(w) for w in workers}
        for i, pid in enumerate(sorted(set(children(pids[name])) | managers)):
            pids[f"{name}-engine-{i}"] = pid
        for i, pid in enumerate(workers):
            pids[f"{name}-worker-{i}"] = pid
    return pids


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def engine_runs(env: dict[str, str]) -> dict[str, int]:
    """How often each task ran, summed over every local endpoint of the stack."""
    import requests

    state = json.loads((Path(env["FIRST_HOME"]) / "stack.json").read_text())
    auth = {"Authorization": f"Bearer {state['endpoint_token']}"}
    runs: dict[str, int] = {}
    for url in state["compute_urls"].values():
        for task, n in requests.get(f"{url}/stats", headers=auth, timeout=5).json()["runs"].items():
            runs[task] = runs.get(task, 0) + int(n)
    return runs


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used, read from the OS."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_s(pid)
        except OSError:
            continue
    return out


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


def commit() -> str:
    """The commit measured (``+ local changes`` when the code differs from it)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in _NOT_CODE)
    )
    return f"{head} + local changes" if changed else head


def write_result(name: str, command: str, figures: dict[str, Any]) -> Path:
    """``bench/results/<name>.json``: the figures with when, where and what was measured."""
    measured = {
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({"measured": measured, "command": command, **figures}, indent=2) + "\n"
    )
    return path
