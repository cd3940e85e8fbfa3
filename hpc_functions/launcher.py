"""Start the node's ``vllm serve`` processes and wait until each answers /health.

Run from a Globus Compute endpoint's ``worker_init`` (see ``infra/globus-compute/``)::

    python -m hpc_functions.launcher --config models.json [--base-port 8001] [--log-dir DIR]

``models.json``::

    {"log_dir": "~/.first/vllm-logs",            # optional; --log-dir wins
     "models": [{"model": "meta-llama/Llama-3.1-8B-Instruct",  # HF id or weights path
                 "served_model_name": "meta-llama/Llama-3.1-8B-Instruct",  # default: model
                 "port": 8001,                    # default: --base-port + index
                 "tensor_parallel_size": 4,       # default 1
                 "max_model_len": 8192,           # optional
                 "tool_call_parser": "llama3_json",  # optional: tools with tool_choice auto
                 "reasoning_parser": "deepseek_r1",  # optional: reasoning_content
                 "startup_timeout_s": 1800,       # optional; --timeout otherwise
                 "env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
                 "extra_args": ["--gpu-memory-utilization", "0.9"]}]}

Every model starts at once (loading weights dominates: in parallel the node is ready when the
slowest is), detached into its own session so it outlives this process and the worker_init
shell. Idempotent: a model already healthy on its port, or already started by an earlier run
(its pid file names a live process), is not started again. Exit status 0 when every model is
healthy; 1 otherwise, with the tail of each failed model's log on stderr so the batch job's
output says why; 2 for a bad config or no ``vllm`` executable.

A model's ``tool_call_parser`` and ``reasoning_parser`` are the ones its registry entry names
(``infra/deployments/``): the gateway lists the model as able to call tools (and reason) from the
registry, and vLLM does it only when started with ``--enable-auto-tool-choice --tool-call-parser``
(``--reasoning-parser``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASE_PORT = 8001
DEFAULT_TIMEOUT_S = 1800.0  # a 70B model from a parallel filesystem can take 10+ minutes
DEFAULT_LOG_DIR = "~/.first/vllm-logs"
TAIL_LINES = 40
PROBE_TIMEOUT_S = 2.0


class ConfigError(ValueError):
    """models.json is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ModelSpec:
    model: str
    served_model_name: str
    port: int
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    startup_timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_port: int) -> ModelSpec:
        if not isinstance(data, dict) or not data.get("model"):
            raise ConfigError(f"each model needs a 'model' (got {data!r})")
        try:
            max_len = data.get("max_model_len")
            timeout = data.get("startup_timeout_s")
            return cls(
                model=str(data["model"]),
                served_model_name=str(data.get("served_model_name") or data["model"]),
                port=int(data.get("port") or default_port),
                tensor_parallel_size=int(data.get("tensor_parallel_size") or 1),
                max_model_len=None if max_len is None else int(max_len),
                tool_call_parser=_optional_name(data, "tool_call_parser"),
                reasoning_parser=_optional_name(data, "reasoning_parser"),
                startup_timeout_s=None if timeout is None else float(timeout),
                env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
                extra_args=tuple(str(a) for a in data.get("extra_args") or ()),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"bad model entry {data.get('model')!r}: {exc}") from exc

    @property
    def slug(self) -> str:
        """A file-name-safe name for this model's log and pid files."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.served_model_name) + f"-{self.port}"

    def command(self, vllm: str, host: str) -> list[str]:
        cmd = [vllm, "serve", self.model, "--host", host, "--port", str(self.port)]
        cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.tool_call_parser is not None:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.reasoning_parser is not None:
            cmd += ["--reasoning-parser", self.reasoning_parser]
        cmd += ["--served-model-name", self.served_model_name, *self.extra_args]
        return cmd


def _optional_name(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a parser name, got {value!r}")
    return value


@dataclass
class Launch:
    """One model's start-up, as the wait loop tracks it."""

    spec: ModelSpec
    log_path: Path
    pid: int | None
    deadline: float
    process: subprocess.Popen[bytes] | None = None  # only for a process this run started
    state: str = "starting"  # starting | ready | already-running | failed
    reason: str = ""


def load_config(path: Path, base_port: int) -> tuple[list[ModelSpec], str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ConfigError(f"{path}: expected an object with a 'models' list")
    specs = [ModelSpec.from_dict(m, base_port + i) for i, m in enumerate(data["models"])]
    ports = [s.port for s in specs]
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{path}: two models share a port ({ports})")
    log_dir = data.get("log_dir")
    return specs, None if log_dir is None else str(log_dir)


def _get(url: str, api_key: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError):  # refused, reset, timed out, or a half-started server
        return 0, b""


def is_healthy(host: str, port: int) -> bool:
    return _get(f"http://{host}:{port}/health", None)[0] == 200


def serves_model(host: str, port: int, name: str, api_key: str | None) -> bool | None:
    """Whether /v1/models lists ``name``; None when it cannot tell (e.g. another api key)."""
    status, body = _get(f"http://{host}:{port}/v1/models", api_key)
    if status != 200:
        return None
    try:
        ids = {m.get("id") for m in json.loads(body).get("data", [])}
    except (ValueError, AttributeError):
        return None
    return name in ids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's: PID reuse, not ours
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _start(spec: ModelSpec, vllm: str, host: str, log_dir: Path, timeout_s: float) -> Launch:
    log_path = log_dir / f"{spec.slug}.log"
    pid_path = log_dir / f"{spec.slug}.pid"
    deadline = time.monotonic() + (spec.startup_timeout_s or timeout_s)
    api_key = spec.env.get("VLLM_API_KEY") or os.environ.get("VLLM_API_KEY")

    if is_healthy(host, spec.port):
        if serves_model(host, spec.port, spec.served_model_name, api_key) is False:
            launch = Launch(spec, log_path, None, deadline, state="failed")
            launch.reason = f"port {spec.port} already serves a different model"
            return launch
        return Launch(spec, log_path, _read_pid(pid_path), deadline, state="already-running")

    pid = _read_pid(pid_path)
    if pid is not None and _pid_alive(pid):
        return Launch(spec, log_path, pid, deadline)  # an earlier run is still loading it

    with log_path.open("ab") as log:
        log.write(f"\n=== first launcher {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n".encode())
        log.flush()
        process = subprocess.Popen(
            spec.command(vllm, host),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env},
            start_new_session=True,  # outlive worker_init's shell; killable as a group
        )
    pid_path.write_text(f"{process.pid}\n")
    return Launch(spec, log_path, process.pid, deadline, process=process)


def _exited(launch: Launch) -> int | None:
    if launch.process is not None:
        return launch.process.poll()
    if launch.pid is not None and not _pid_alive(launch.pid):
        return -1  # started by an earlier run; its exit status is not ours to read
    return None


def _stop(launch: Launch) -> None:
    # A model that missed its deadline still holds GPU memory; free it for the next attempt.
    if launch.process is None or launch.process.poll() is not None:
        return
    try:
        os.killpg(launch.process.pid, signal.SIGTERM)
        launch.process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.process.pid, signal.SIGKILL)


def wait_all(launches: list[Launch], host: str, poll_interval_s: float) -> None:
    pending = [la for la in launches if la.state == "starting"]
    while pending:
        for launch in list(pending):
            if is_healthy(host, launch.spec.port):
                launch.state = "ready"
            elif (code := _exited(launch)) is not None:
                launch.state = "failed"
                launch.reason = f"vllm exited with status {code} before becoming healthy"
            elif time.monotonic() > launch.deadline:
                launch.state = "failed"
                launch.reason = "not healthy before the start-up timeout"
                _stop(launch)
            if launch.state != "starting":
                pending.remove(launch)
        if pending:
            time.sleep(poll_interval_s)


def launch(
    specs: Sequence[ModelSpec],
    *,
    vllm: str,
    log_dir: Path,
    host: str = "127.0.0.1",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_interval_s: float = 2.0,
) -> list[Launch]:
    """Start every model not already running and wait for all; returns each one's outcome."""
    log_dir.mkdir(parents=True, exist_ok=True)
    launches = [_start(spec, vllm, host, log_dir, timeout_s) for spec in specs]
    wait_all(launches, host, poll_interval_s)
    return launches


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc_functions.launcher", description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="models.json")
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep vLLM node-local)")
    p.add_argument("--log-dir", help=f"default: the config's log_dir, else {DEFAULT_LOG_DIR}")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per model")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between probes")
    p.add_argument("--vllm", help="vllm executable (default: `vllm` on PATH)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        specs, config_log_dir = load_config(args.config, args.base_port)
    except ConfigError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    vllm = args.vllm or shutil.which("vllm")
    if not vllm:
        print("launcher: no `vllm` on PATH; is the endpoint's venv active?", file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir or config_log_dir or DEFAULT_LOG_DIR).expanduser()

    launches = launch(
        specs,
        vllm=vllm,
        log_dir=log_dir,
        host=args.host,
        timeout_s=args.timeout,
        poll_interval_s=args.poll_interval,
    )
    failed = [la for la in launches if la.state == "failed"]
    for la in launches:
        where = f"http://{args.host}:{la.spec.port}/v1"
        print(f"launcher: {la.spec.served_model_name} at {where}: {la.state} (log {la.log_path})")
    for la in failed:
        print(
            f"launcher: {la.spec.served_model_name} failed: {la.reason}\n"
            f"--- last {TAIL_LINES} lines of {la.log_path} ---\n{tail(la.log_path)}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
