"""Each process builds only what it uses (issue 18): a fresh interpreter builds the poller (or
the batch worker) from its own root against the moto server, runs it until it stops, and
reports the modules it loaded. None of the API's (gateway, dashboard, fleet, authenticators)
may be among them. ``tests/unit/test_import_graph.py`` proves the same of the import graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from chalicelib.settings import REPO_ROOT
from tests.unit.test_import_graph import API_ONLY, POLLER_AUTH

# Build from the process's root as its main.py does, stop at once, run, and report.
SCRIPT = """
import json, sys
from chalicelib.root import Root
from chalicelib.{kind}.root import build, start_accounting

root = Root()
worker = build(root)
accounting = start_accounting(worker, root)
worker.consumer.stopping.set()
worker.run()
accounting.close()
print(json.dumps(sorted(m for m in sys.modules if m == "app" or m.startswith("chalicelib"))))
"""


def loaded_by(kind: str, stage: str) -> list[str]:
    env = {
        **os.environ,
        "FIRST_STAGE": stage,
        "FIRST_REGISTRY_PATH": str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(kind=kind)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return modules


@pytest.mark.parametrize("kind", ["poller", "batch"])
def test_a_workers_root_builds_and_runs_without_the_apis_modules(stage: str, kind: str) -> None:
    modules = loaded_by(kind, stage)
    assert f"chalicelib.{kind}.worker" in modules  # it did build the worker
    api = [m for m in modules if any(m == a or m.startswith(f"{a}.") for a in API_ONLY)]
    assert api == []
    if kind == "poller":
        # Of chalicelib.auth only the Principal value type (the limits it releases name one).
        auth = {m for m in modules if m.startswith("chalicelib.auth")}
        assert auth <= POLLER_AUTH


@pytest.mark.parametrize(("kind", "started"), [("poller", "poller"), ("batch", "batch worker")])
def test_a_worker_stops_cleanly_on_sigterm(stage: str, kind: str, started: str) -> None:
    # Both mains share the consumer's signal handling (``run_until_signalled``): SIGTERM while
    # idle in a long poll ends the process with status 0, its accounting closed.
    env = {
        **os.environ,
        "FIRST_STAGE": stage,
        "FIRST_REGISTRY_PATH": str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", f"chalicelib.{kind}.main"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if f'"{started} started"' in line:
                break
        else:
            raise AssertionError("".join(seen)[-3000:])
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest[-3000:]
    assert "Traceback" not in rest
