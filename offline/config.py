"""Where a local stack lives and how to reach it: its config, and the small waits it needs.

Shared by ``offline.stack`` (which runs the stack) and ``offline.background`` (which starts and
stops it as ``make up`` / ``make down`` do), so neither imports the other's runner.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT

# The group whose members may read the operator routes; the dev key is in it.
OPERATORS = "first-operators"


@dataclass
class StackConfig:
    home: Path = REPO_ROOT / ".first"
    stage: str = "local"
    aws_url: str = "http://127.0.0.1:4566"
    api_port: int = 8000
    compute_port: int = 8765
    # A second, smaller "cluster", so federation (routing, failover) runs offline.
    compute_b_port: int = 8766
    compute_b_workers: int = 1
    # The WebSocket API (streaming), served by the API process beside the REST routes.
    ws_port: int = 8001
    pollers: int = 1
    compute_workers: int = 2
    visibility_timeout_s: int = 10
    # Registry models the compute endpoints serve without preheating them (cold until warmed).
    cold_models: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    # The compute endpoint answers only holders of this (any local user can reach its port).
    endpoint_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Signs the per-request capability tokens HPC functions push chunks with (per stack).
    stream_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def on_free_ports(cls, home: Path, **options: Any) -> StackConfig:
        """A stack in ``home`` whose every port is one nobody holds now: beside `make up`, a
        test suite or a benchmark (``options``: any other field)."""
        return cls(
            home=home,
            aws_url=f"http://127.0.0.1:{free_port()}",
            api_port=free_port(),
            compute_port=free_port(),
            compute_b_port=free_port(),
            ws_port=free_port(),
            **options,
        )

    @property
    def env_file(self) -> Path:
        return self.home / "local.env"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def compute_url(self) -> str:
        return f"http://127.0.0.1:{self.compute_port}"

    @property
    def compute_b_url(self) -> str:
        return f"http://127.0.0.1:{self.compute_b_port}"

    def local_endpoints(self) -> dict[str, tuple[int, int]]:
        """The registry's local endpoints (``infra/deployments/local.json``): name → (port,
        workers). Each runs as the stack's child ``compute-<name>``."""
        return {
            "local-a": (self.compute_port, self.compute_workers),
            "local-b": (self.compute_b_port, self.compute_b_workers),
        }

    def env(self) -> dict[str, str]:
        """The environment every process of the stack runs with."""
        env = dict(os.environ)
        env.setdefault("AWS_ACCESS_KEY_ID", "test")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env.update(
            {
                "AWS_ENDPOINT_URL": self.aws_url,
                "FIRST_STAGE": self.stage,
                "FIRST_HOME": str(self.home),
                "FIRST_LOCAL_ENDPOINT_URL": self.compute_url,
                "FIRST_LOCAL_ENDPOINT_B_URL": self.compute_b_url,
                "FIRST_LOCAL_ENDPOINT_TOKEN": self.endpoint_token,
                "FIRST_OPERATOR_GROUPS": OPERATORS,
                "FIRST_POLLER_VISIBILITY_TIMEOUT_S": str(self.visibility_timeout_s),
                "FIRST_STREAM_KEY": self.stream_key,
                "FIRST_STREAM_RELAY_URL": f"{self.api_url}/relay/push",
                "FIRST_WEBSOCKET_MANAGEMENT_URL": self.api_url,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(self.extra_env)
        return env


def free_port() -> int:
    """A loopback port nobody holds right now (for stacks that must not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - loopback only
            return True
    except urllib.error.HTTPError:
        return True  # something is serving there
    except (urllib.error.URLError, OSError):
        return False


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - loopback only
            return True
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    check: object, what: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see its log")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in {timeout_s:.0f} s")
