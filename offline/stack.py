"""``make run`` / ``make up`` / ``make down``: the whole system on one machine, offline.

    python -m offline.stack run     foreground; Ctrl-C stops every process it started
    python -m offline.stack up      background; returns once healthy
    python -m offline.stack down

Order: local AWS (reuses whatever already answers at AWS_ENDPOINT_URL, e.g. LocalStack; else
starts the embedded moto server) → resources from infra/resources.yaml → a dev API key → the
compute endpoint (engines warm) → poller(s) → API. ``.first/local.env`` is written last, so a
script that sources it sees a healthy stack.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from chalicelib.settings import REPO_ROOT

TINY_MODEL = "first/tiny-chat"


@dataclass
class StackConfig:
    home: Path = REPO_ROOT / ".first"
    stage: str = "local"
    aws_url: str = "http://127.0.0.1:4566"
    api_port: int = 8000
    compute_port: int = 8765
    pollers: int = 1
    compute_workers: int = 2
    visibility_timeout_s: int = 10
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.home / "local.env"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def compute_url(self) -> str:
        return f"http://127.0.0.1:{self.compute_port}"

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
                "FIRST_POLLER_VISIBILITY_TIMEOUT_S": str(self.visibility_timeout_s),
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


def build_tiny_model(home: Path) -> Path:
    out = home / "models" / "tiny-chat"
    subprocess.run(
        [sys.executable, "-m", "hpc_functions.build_tiny_model", str(out)],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    return out


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.api_key: str | None = None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.config.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.config.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=self.config.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C reaches only this orchestrator, which stops the children
            # in order (API first, AWS last) instead of every process dying at once.
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def start(self) -> None:
        c = self.config
        c.home.mkdir(parents=True, exist_ok=True)
        c.env_file.unlink(missing_ok=True)
        build_tiny_model(c.home)
        if not answers(c.aws_url):
            port = urlparse(c.aws_url).port or 4566
            proc = self._spawn("aws", ["offline.aws_server", "--port", str(port)])
            wait_until(lambda: answers(c.aws_url), "local AWS endpoint", 30, proc)
        self._deploy_resources()
        self.api_key = self._create_dev_key()
        proc = self.start_compute()
        wait_until(lambda: answers(f"{c.compute_url}/health"), "compute endpoint", 180, proc)
        for i in range(c.pollers):
            self.start_poller(i)
        proc = self._spawn("api", ["offline.api_server", "--port", str(c.api_port)])
        wait_until(lambda: answers(f"{c.api_url}/health"), "API", 60, proc)
        self._write_env_file()

    def start_compute(self) -> subprocess.Popen[bytes]:
        args = ["offline.compute_endpoint", "--port", str(self.config.compute_port)]
        return self._spawn("compute", [*args, "--workers", str(self.config.compute_workers)])

    def start_poller(self, index: int = 0) -> subprocess.Popen[bytes]:
        return self._spawn(f"poller-{index}", ["chalicelib.poller.main"])

    def _first(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "first_cli.main", *args],
            cwd=REPO_ROOT,
            env=self.config.env(),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def _deploy_resources(self) -> None:
        self._first("resources", "deploy")

    def _create_dev_key(self) -> str:
        return self._first("keys", "create", "--user", "dev")

    def _write_env_file(self) -> None:
        c = self.config
        env = c.env()
        lines = {
            "OPENAI_BASE_URL": f"{c.api_url}/v1",
            "OPENAI_API_KEY": self.api_key or "",
            "AWS_ENDPOINT_URL": c.aws_url,
            "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
            "FIRST_STAGE": c.stage,
            "FIRST_HOME": str(c.home),
            "FIRST_LOCAL_ENDPOINT_URL": c.compute_url,
            "FIRST_REQUESTS_TABLE": f"first-{c.stage}-requests",
            "FIRST_KEYS_TABLE": f"first-{c.stage}-keys",
            "FIRST_INTERACTIVE_QUEUE": f"first-{c.stage}-interactive",
            "FIRST_INTERACTIVE_DLQ": f"first-{c.stage}-interactive-dlq",
            "FIRST_BUCKET": f"first-{c.stage}-data",
            "FIRST_MODEL": TINY_MODEL,
        }
        tmp = c.env_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        tmp.replace(c.env_file)

    def stop(self, timeout_s: float = 10.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.config.env_file.unlink(missing_ok=True)

    def banner(self) -> str:
        c = self.config
        return f"""
FIRST is up (stage {c.stage}).
  API            {c.api_url}/v1
  API key (dev)  {self.api_key}
  local AWS      {c.aws_url}
  logs           {c.logs}/
  environment    {c.env_file}   (source it: set -a; . {c.env_file}; set +a)

Try it:
  from openai import OpenAI
  client = OpenAI(base_url="{c.api_url}/v1", api_key="{self.api_key}")
  r = client.chat.completions.create(model="{TINY_MODEL}",
      messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=16)
  print(r.choices[0].message.content)

Ctrl-C stops everything.
"""


def _run(config: StackConfig) -> int:
    stack = Stack(config)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        print(stack.banner(), flush=True)
        while not stopping:
            for name, proc in stack.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        print("stopping FIRST…", flush=True)
        stack.stop()
    return 0


def _pid_file(config: StackConfig) -> Path:
    return config.home / "stack.pid"


def _up(config: StackConfig, timeout_s: float = 300.0) -> int:
    if config.env_file.exists() and answers(f"{config.api_url}/health"):
        print(f"already up: {config.env_file}")
        return 0
    config.logs.mkdir(parents=True, exist_ok=True)
    log = open(config.logs / "stack.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.stack", "run", *_config_args(config)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _pid_file(config).write_text(str(proc.pid))
    try:
        wait_until(lambda: config.env_file.exists(), "stack", timeout_s, proc)  # type: ignore[arg-type]
    except RuntimeError as exc:
        print(f"{exc}; last lines of {config.logs}/stack.log:", file=sys.stderr)
        print((config.logs / "stack.log").read_text()[-3000:], file=sys.stderr)
        return 1
    print(f"FIRST is up: {config.api_url}/v1 — environment in {config.env_file}")
    return 0


def _down(config: StackConfig) -> int:
    pid_file = _pid_file(config)
    if not pid_file.exists():
        print("not running")
        return 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    print("FIRST stopped")
    return 0


def _config_args(c: StackConfig) -> list[str]:
    return [
        "--home",
        str(c.home),
        "--aws-url",
        c.aws_url,
        "--api-port",
        str(c.api_port),
        "--compute-port",
        str(c.compute_port),
        "--pollers",
        str(c.pollers),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "up", "down"])
    p.add_argument(
        "--home", type=Path, default=Path(os.environ.get("FIRST_HOME", REPO_ROOT / ".first"))
    )
    p.add_argument("--aws-url", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    p.add_argument("--api-port", type=int, default=int(os.environ.get("FIRST_API_PORT", "8000")))
    p.add_argument(
        "--compute-port", type=int, default=int(os.environ.get("FIRST_COMPUTE_PORT", "8765"))
    )
    p.add_argument("--pollers", type=int, default=int(os.environ.get("FIRST_POLLERS", "1")))
    a = p.parse_args(argv)
    config = StackConfig(
        home=a.home.resolve(),
        aws_url=a.aws_url,
        api_port=a.api_port,
        compute_port=a.compute_port,
        pollers=a.pollers,
    )
    return {"run": _run, "up": _up, "down": _down}[a.command](config)


if __name__ == "__main__":
    sys.exit(main())
