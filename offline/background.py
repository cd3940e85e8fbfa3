"""The stack as ``make up`` runs it: ``python -m offline.stack run`` in a session of its own.

``up`` returns once ``local.env`` exists (the stack is healthy); ``down`` stops the orchestrator,
which stops its children in order, then kills whatever it left (an orchestrator killed with -9
cannot stop anything). The end-to-end tests drive exactly this, so their kill -9s meet the real
supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT
from offline.config import StackConfig, wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited all the same
    except OSError:
        return True


class BackgroundStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.config.home / "stack.pid"

    def start(self, timeout_s: float = 300.0) -> None:
        c = self.config
        c.logs.mkdir(parents=True, exist_ok=True)
        c.env_file.unlink(missing_ok=True)
        log = open(c.logs / "stack.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "offline.stack", "run", *config_args(c)],
            cwd=REPO_ROOT,
            env={**os.environ, **c.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._process = proc  # reaped by stop(); `make up` exits and leaves it running
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_until(lambda: c.env_file.exists(), "stack", timeout_s, proc)
        except RuntimeError as exc:
            tail = (c.logs / "stack.log").read_text()[-3000:]
            self.stop()
            raise RuntimeError(f"{exc}; last lines of {c.logs}/stack.log:\n{tail}") from exc

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the stack and everything it started; False when it was not running."""
        if not self.pid_file.exists():
            return False
        pid = int(self.pid_file.read_text())
        children = list(self._read_state().get("pids", {}).values())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        for leftover in [pid, *children]:
            if _alive(leftover):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
        if self._process is not None:  # started by this object: reap it, no zombie left
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            self._process = None
        self.pid_file.unlink(missing_ok=True)
        self.config.state_file.unlink(missing_ok=True)
        self.config.env_file.unlink(missing_ok=True)
        return True

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.config.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def env(self) -> dict[str, str]:
        """``local.env`` as a dict."""
        lines = self.config.env_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def api_key(self) -> str:
        return self.env()["OPENAI_API_KEY"]

    @property
    def endpoint_token(self) -> str:
        return str(self._read_state()["endpoint_token"])

    @property
    def stream_key(self) -> str:
        """The key the running stack signs streaming capability tokens with."""
        return str(self._read_state()["stream_key"])

    def pids(self) -> dict[str, int]:
        """The pid of each process of the stack, as the supervisor last recorded them."""
        return {k: int(v) for k, v in self._read_state().get("pids", {}).items()}

    def first(self, *args: str) -> str:
        """Run the operator CLI against this stack; its output."""
        env = {**self.config.env(), **self.env()}
        out = subprocess.run(
            [sys.executable, "-m", "first_cli.main", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"first {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out.stdout.strip()


def config_args(c: StackConfig) -> list[str]:
    return [
        "--home",
        str(c.home),
        "--aws-url",
        c.aws_url,
        "--api-port",
        str(c.api_port),
        "--compute-port",
        str(c.compute_port),
        "--compute-b-port",
        str(c.compute_b_port),
        "--ws-port",
        str(c.ws_port),
        "--pollers",
        str(c.pollers),
        "--workers",
        str(c.compute_workers),
        "--visibility-timeout",
        str(c.visibility_timeout_s),
        *(arg for model in c.cold_models for arg in ("--cold", model)),
    ]
