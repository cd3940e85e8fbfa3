"""``make run`` / ``make up`` / ``make down``: the whole system on one machine, offline.

    python -m offline.stack run     foreground; Ctrl-C stops every process it started
    python -m offline.stack up      background; returns once healthy
    python -m offline.stack down

Order: local AWS (reuses whatever already answers at AWS_ENDPOINT_URL, e.g. LocalStack; else
starts the embedded moto server) → resources from infra/resources.yaml → a dev API key → the
compute endpoint (engines warm) → poller(s) → API. ``.first/local.env`` is written last, so a
script that sources it sees a healthy stack; ``.first/stack.json`` (mode 0600) names each
process's pid and the compute endpoint's per-stack secret, for tests and ``down``.

While it runs, a supervisor restarts whatever dies (``offline.supervisor``); only Ctrl-C, SIGTERM
or ``make down`` stops the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chalicelib.settings import REPO_ROOT
from offline.background import BackgroundStack
from offline.config import (
    OPERATORS,
    StackConfig,
    answers,
    free_port,
    healthy,
    wait_until,
)
from offline.supervisor import Child, Supervisor

# Re-exported: tests, benchmarks and the CLI take these from here.
__all__ = ["OPERATORS", "Stack", "StackConfig", "answers", "free_port", "healthy", "wait_until"]

TINY_MODEL = "first/tiny-chat"


def build_tiny_model(home: Path) -> Path:
    """The tiny chat model, and beside it first/tiny-agent (the same, ending its turn within a few
    tokens) and the tiny vision-language model (first/tiny-vision)."""
    out = home / "models" / "tiny-chat"
    agent = home / "models" / "tiny-agent"
    vision = home / "models" / "tiny-vision"
    module = "hpc_functions.build_tiny_vision_model"
    subprocess.run(
        [sys.executable, "-m", module, str(out), str(agent), str(vision)],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    return out


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by this user only (it holds keys and secrets)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


class Stack:
    def __init__(self, config: StackConfig, log: Any = None) -> None:
        self.config = config
        self.api_key: str | None = None
        self._say = log or (lambda line: print(line, flush=True))
        self.supervisor = Supervisor(self._say, on_restart=self._restarted)

    def _spawner(self, name: str, args: list[str]) -> Any:
        def spawn() -> subprocess.Popen[bytes]:
            self.config.logs.mkdir(parents=True, exist_ok=True)
            log = open(self.config.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child's
            return subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=REPO_ROOT,
                env=self.config.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches only this orchestrator, which stops the children
                # in order (API first, AWS last) instead of every process dying at once.
                start_new_session=True,
            )

        return spawn

    def _add(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        return self.supervisor.add(name, self._spawner(name, args)).proc

    def start(self) -> None:
        c = self.config
        c.home.mkdir(parents=True, exist_ok=True)
        c.env_file.unlink(missing_ok=True)
        build_tiny_model(c.home)
        if not answers(c.aws_url):
            port = urlparse(c.aws_url).port or 4566
            proc = self._add("aws", ["offline.aws_server", "--port", str(port)])
            wait_until(lambda: answers(c.aws_url), "local AWS endpoint", 30, proc)
        self._deploy_resources()
        self.api_key = self._create_dev_key()
        started = []
        for name, (port, workers) in c.local_endpoints().items():
            args = ["offline.compute_endpoint", "--port", str(port), "--name", name]
            args += [arg for model in c.cold_models for arg in ("--cold", model)]
            started.append((port, self._add(f"compute-{name}", [*args, "--workers", str(workers)])))
        for port, proc in started:
            url = f"http://127.0.0.1:{port}/health"
            # 503 while its models load (it listens at once): wait for the 200.
            wait_until(lambda u=url: healthy(u), "compute endpoint", 180, proc)
        for i in range(c.pollers):
            self._add(f"poller-{i}", ["chalicelib.poller.main"])
        self._add("batch", ["chalicelib.batch.main"])
        # EventBridge's part: the app's @app.schedule functions (the reply-queue sweep).
        self._add("scheduler", ["offline.scheduler"])
        api_args = ["--port", str(c.api_port), "--ws-port", str(c.ws_port)]
        proc = self._add("api", ["offline.api_server", *api_args])
        wait_until(lambda: answers(f"{c.api_url}/health"), "API", 60, proc)
        self._write_state()
        self._write_env_file()

    def supervise(self) -> None:
        """One round of the supervisor: act on control requests, restart what is due, record
        the new pids."""
        changed = self._control()
        if self.supervisor.check() or changed:
            self._write_state()

    def _control(self) -> bool:
        """``first local endpoint stop|start NAME`` leaves ``control/<verb>-<child>`` files."""
        folder = self.config.home / "control"
        if not folder.is_dir():
            return False
        changed = False
        for request in sorted(folder.iterdir()):
            verb, _, child = request.name.partition("-")
            request.unlink(missing_ok=True)
            if child not in self.supervisor.children or verb not in ("stop", "start"):
                self._say(f"ignored control request {request.name}")
                continue
            if verb == "stop":
                self.supervisor.hold(child)
            else:
                self.supervisor.release(child)
            changed = True
        return changed

    def _restarted(self, child: Child) -> None:
        if child.name != "aws":
            return
        # moto keeps everything in memory: a restarted one is empty. Requests in flight are
        # lost with it (say so); the stack itself comes back usable.
        c = self.config
        try:
            wait_until(lambda: answers(c.aws_url), "local AWS endpoint", 30, child.proc)
            self._deploy_resources()
            self.api_key = self._create_dev_key()
            self._write_env_file()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            self._say(f"local AWS came back but could not be set up again: {exc}")
            return
        self._say(f"local AWS restarted empty: resources redeployed, new dev key in {c.env_file}")

    def first(self, *args: str) -> str:
        """Run the operator CLI against this stack; its output."""
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
        self.first("resources", "deploy")

    def _create_dev_key(self) -> str:
        # The local stack's developer is its operator too (GET /v1/endpoints).
        return self.first("keys", "create", "--user", "dev", "--group", OPERATORS)

    def _write_state(self) -> None:
        c = self.config
        state = {
            "pids": self.supervisor.pids(),
            "held": self.supervisor.held(),
            "orchestrator": os.getpid(),
            "api_url": c.api_url,
            "compute_url": c.compute_url,
            "compute_urls": {
                name: f"http://127.0.0.1:{port}" for name, (port, _) in c.local_endpoints().items()
            },
            "endpoint_token": c.endpoint_token,
            "stream_key": c.stream_key,
        }
        _write_private(c.state_file, json.dumps(state, indent=1))

    def _write_env_file(self) -> None:
        c = self.config
        env = c.env()
        lines = {
            "OPENAI_BASE_URL": f"{c.api_url}/v1",
            "OPENAI_API_KEY": self.api_key or "",
            # The anthropic SDK's own variables (the Messages API, /v1/messages).
            "ANTHROPIC_BASE_URL": c.api_url,
            "ANTHROPIC_API_KEY": self.api_key or "",
            "FIRST_WS_URL": c.ws_url,
            "AWS_ENDPOINT_URL": c.aws_url,
            "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
            "FIRST_STAGE": c.stage,
            "FIRST_HOME": str(c.home),
            "FIRST_LOCAL_ENDPOINT_URL": c.compute_url,
            "FIRST_LOCAL_ENDPOINT_B_URL": c.compute_b_url,
            "FIRST_LOCAL_ENDPOINT_TOKEN": c.endpoint_token,
            "FIRST_REQUESTS_TABLE": f"first-{c.stage}-requests",
            "FIRST_KEYS_TABLE": f"first-{c.stage}-keys",
            "FIRST_INTERACTIVE_QUEUE": f"first-{c.stage}-interactive",
            "FIRST_INTERACTIVE_DLQ": f"first-{c.stage}-interactive-dlq",
            "FIRST_BUCKET": f"first-{c.stage}-data",
            "FIRST_DROP_BUCKET": f"first-{c.stage}-drop",
            "FIRST_BATCH_QUEUE": f"first-{c.stage}-batch",
            "FIRST_MODEL": TINY_MODEL,
        }
        _write_private(c.env_file, "".join(f"{k}={v}\n" for k, v in lines.items()))

    def stop(self, timeout_s: float = 10.0) -> None:
        order = ["api", *sorted(n for n in self.supervisor.children if n.startswith("poller"))]
        order += [n for n in self.supervisor.children if n in ("batch", "scheduler")]
        computes = sorted(n for n in self.supervisor.children if n.startswith("compute"))
        self.supervisor.stop([*order, *computes, "aws"], timeout_s)
        self.config.env_file.unlink(missing_ok=True)
        self.config.state_file.unlink(missing_ok=True)

    def banner(self, show_key: bool = True) -> str:
        """What ``make run`` prints. The key only on a terminal: ``make up`` (and the e2e suite)
        send this to ``logs/stack.log``, and no key goes into a log; it is in ``local.env``."""
        c = self.config
        key = self.api_key if show_key else "(OPENAI_API_KEY in the environment file below)"
        shown = f'"{self.api_key}"' if show_key else 'os.environ["OPENAI_API_KEY"]'
        return f"""
FIRST is up (stage {c.stage}).
  API            {c.api_url}/v1
  WebSocket API  {c.ws_url}   (streaming; `first proxy` serves it as SSE)
  API key (dev)  {key}
  local AWS      {c.aws_url}
  logs           {c.logs}/
  environment    {c.env_file}   (source it: set -a; . {c.env_file}; set +a)

Try it:
  from openai import OpenAI
  client = OpenAI(base_url="{c.api_url}/v1", api_key={shown})
  r = client.chat.completions.create(model="{TINY_MODEL}",
      messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=16)
  print(r.choices[0].message.content)

A process that dies is restarted; Ctrl-C stops everything.
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
        print(stack.banner(show_key=sys.stdout.isatty()), flush=True)
        while not stopping:
            stack.supervise()
            time.sleep(0.2)
    finally:
        print("stopping FIRST…", flush=True)
        stack.stop()
    return 0


def _up(config: StackConfig) -> int:
    if config.env_file.exists() and answers(f"{config.api_url}/health"):
        print(f"already up: {config.env_file}")
        return 0
    try:
        BackgroundStack(config).start()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"FIRST is up: {config.api_url}/v1 — environment in {config.env_file}")
    return 0


def _down(config: StackConfig) -> int:
    print("FIRST stopped" if BackgroundStack(config).stop() else "not running")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["run", "up", "down"])
    p.add_argument(
        "--home", type=Path, default=Path(os.environ.get("FIRST_HOME", REPO_ROOT / ".first"))
    )
    p.add_argument("--aws-url", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    p.add_argument("--api-port", type=int, default=int(os.environ.get("FIRST_API_PORT", "8000")))
    p.add_argument("--ws-port", type=int, default=int(os.environ.get("FIRST_WS_PORT", "8001")))
    p.add_argument(
        "--compute-port", type=int, default=int(os.environ.get("FIRST_COMPUTE_PORT", "8765"))
    )
    p.add_argument(
        "--compute-b-port", type=int, default=int(os.environ.get("FIRST_COMPUTE_B_PORT", "8766"))
    )
    p.add_argument("--pollers", type=int, default=int(os.environ.get("FIRST_POLLERS", "1")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("FIRST_COMPUTE_WORKERS", "2")))
    p.add_argument("--visibility-timeout", type=int, default=10)
    p.add_argument(
        "--cold", action="append", default=[], metavar="MODEL", help="serve MODEL, not preheated"
    )
    a = p.parse_args(argv)
    config = StackConfig(
        home=a.home.resolve(),
        aws_url=a.aws_url,
        api_port=a.api_port,
        compute_port=a.compute_port,
        compute_b_port=a.compute_b_port,
        ws_port=a.ws_port,
        pollers=a.pollers,
        compute_workers=a.workers,
        visibility_timeout_s=a.visibility_timeout,
        cold_models=tuple(a.cold),
    )
    return {"run": _run, "up": _up, "down": _down}[a.command](config)


if __name__ == "__main__":
    sys.exit(main())
