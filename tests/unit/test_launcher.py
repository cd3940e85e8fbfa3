"""The node launcher against a fake ``vllm`` executable on PATH.

The fake is a small Python script: ``vllm serve MODEL --port P ... --served-model-name NAME``
records its argv, then (by ``FAKE_VLLM_MODE``) serves /health and /v1/models after a short
delay, exits 1 with an error on stderr, or never becomes healthy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc_functions import launcher
from offline.stack import free_port

FAKE_VLLM = """\
#!{python}
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

args = sys.argv[1:]
with open(os.environ["FAKE_VLLM_ARGV_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
mode = os.environ.get("FAKE_VLLM_MODE", "serve")
if mode == "fail":
    print("ValueError: CUDA out of memory while loading weights", file=sys.stderr, flush=True)
    sys.exit(1)
port = int(args[args.index("--port") + 1])
name = args[args.index("--served-model-name") + 1]
print("INFO: loading weights", flush=True)
if mode == "hang":
    time.sleep(600)
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0.3")))

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/health":
            body = b""
        elif self.path == "/v1/models":
            body = json.dumps({{"object": "list", "data": [{{"id": name}}]}}).encode()
        else:
            self.send_response(404); self.end_headers(); return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

print("INFO:     Application startup complete.", flush=True)
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


# The launcher detaches vLLM on purpose (it outlives the launcher), so its Popen objects are
# dropped with the process still running; that ResourceWarning is the design, not a leak.
pytestmark = pytest.mark.filterwarnings(r"ignore:subprocess \d+ is still running:ResourceWarning")


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(FAKE_VLLM.format(python=sys.executable))
    exe.chmod(0o755)
    argv_log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_ARGV_LOG", str(argv_log))
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    yield argv_log
    # The launcher detaches vLLM on purpose; the test must stop what it started.
    for pid_file in (tmp_path / "logs").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _config(tmp_path: Path, *models: dict[str, object]) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"log_dir": str(tmp_path / "logs"), "models": list(models)}))
    return path


def _run(config: Path, *extra: str) -> int:
    return launcher.main(["--config", str(config), "--poll-interval", "0.05", *extra])


def _argv_lines(argv_log: Path) -> list[list[str]]:
    if not argv_log.exists():
        return []
    return [json.loads(line) for line in argv_log.read_text().splitlines()]


def test_starts_vllm_serve_with_the_configured_flags_and_waits_for_health(
    tmp_path: Path, fake_vllm: Path
) -> None:
    port = free_port()
    config = _config(
        tmp_path,
        {
            "model": "/weights/Llama-3.1-8B-Instruct",
            "served_model_name": "meta-llama/Llama-3.1-8B-Instruct",
            "port": port,
            "tensor_parallel_size": 4,
            "max_model_len": 8192,
            "extra_args": ["--gpu-memory-utilization", "0.9"],
        },
    )

    assert _run(config) == 0

    assert launcher.is_healthy("127.0.0.1", port)
    assert _argv_lines(fake_vllm) == [
        [
            "serve",
            "/weights/Llama-3.1-8B-Instruct",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tensor-parallel-size",
            "4",
            "--max-model-len",
            "8192",
            "--served-model-name",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--gpu-memory-utilization",
            "0.9",
        ]
    ]
    log = (tmp_path / "logs").glob("*.log")
    assert "Application startup complete" in next(log).read_text()


def test_second_run_leaves_a_running_model_alone(tmp_path: Path, fake_vllm: Path) -> None:
    config = _config(tmp_path, {"model": "tiny", "port": free_port()})

    assert _run(config) == 0
    assert _run(config) == 0

    assert len(_argv_lines(fake_vllm)) == 1


def test_models_without_a_port_take_consecutive_ports_from_base_port(
    tmp_path: Path, fake_vllm: Path
) -> None:
    base = free_port()
    config = _config(tmp_path, {"model": "a"}, {"model": "b"})

    launches = launcher.load_config(config, base)[0]

    assert [s.port for s in launches] == [base, base + 1]
    assert [s.served_model_name for s in launches] == ["a", "b"]


def test_model_that_exits_fails_the_launch_with_its_log_tail(
    tmp_path: Path,
    fake_vllm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_VLLM_MODE", "fail")
    config = _config(tmp_path, {"model": "too-big", "port": free_port()})

    assert _run(config) == 1

    err = capsys.readouterr().err
    assert "too-big failed: vllm exited with status 1" in err
    assert "CUDA out of memory while loading weights" in err


def test_model_that_never_becomes_healthy_times_out_and_is_stopped(
    tmp_path: Path,
    fake_vllm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    config = _config(tmp_path, {"model": "slow", "port": free_port(), "startup_timeout_s": 0.5})

    assert _run(config) == 1

    assert "not healthy before the start-up timeout" in capsys.readouterr().err
    pid = int(next((tmp_path / "logs").glob("*.pid")).read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_port_serving_another_model_is_refused(tmp_path: Path, fake_vllm: Path) -> None:
    port = free_port()
    assert _run(_config(tmp_path, {"model": "first-model", "port": port})) == 0

    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"log_dir": str(tmp_path / "logs"), "models": [{"model": "x", "port": port}]})
    )

    assert _run(other) == 1
    assert len(_argv_lines(fake_vllm)) == 1


def test_missing_vllm_executable_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    config = _config(tmp_path, {"model": "m"})

    assert _run(config) == 2
    assert "no `vllm` on PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"models": [{"port": 1}]}),
        json.dumps({"models": [{"model": "a", "port": 9}, {"model": "b", "port": 9}]}),
    ],
    ids=["not-json", "no-model", "shared-port"],
)
def test_malformed_config_exits_2(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)

    assert _run(path, "--vllm", "/bin/true") == 2
    assert "launcher:" in capsys.readouterr().err


def test_a_model_naming_its_parsers_starts_with_auto_tool_choice_and_the_reasoning_parser(
    tmp_path: Path, fake_vllm: Path
) -> None:
    port = free_port()
    config = _config(
        tmp_path,
        {
            "model": "Qwen/Qwen3-8B",
            "port": port,
            "tool_call_parser": "hermes",
            "reasoning_parser": "qwen3",
        },
    )

    assert _run(config) == 0

    (argv,) = _argv_lines(fake_vllm)
    flags = argv[argv.index("--tensor-parallel-size") + 2 : argv.index("--served-model-name")]
    assert flags == [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--reasoning-parser",
        "qwen3",
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"tool_call_parser": "llama3_json"}, ["--enable-auto-tool-choice", "--tool-call-parser"]),
        ({"reasoning_parser": "deepseek_r1"}, ["--reasoning-parser"]),
        ({}, []),
    ],
    ids=["tools-only", "reasoning-only", "neither"],
)
def test_each_parser_adds_only_its_own_flags(entry: dict[str, str], expected: list[str]) -> None:
    spec = launcher.ModelSpec.from_dict({"model": "m", **entry}, 8001)

    command = spec.command("vllm", "127.0.0.1")

    assert [a for a in command if a.startswith("--") and ("parser" in a or "tool" in a)] == expected


@pytest.mark.parametrize("value", ["", 3, ["hermes"]])
def test_a_parser_that_is_not_a_name_is_a_config_error(
    tmp_path: Path, value: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, {"model": "m", "tool_call_parser": value})

    assert _run(path, "--vllm", "/bin/true") == 2
    assert "tool_call_parser" in capsys.readouterr().err


def test_example_models_config_matches_the_example_registry_entries() -> None:
    repo = Path(__file__).resolve().parents[2]
    specs, _ = launcher.load_config(repo / "infra/globus-compute/models.example.json", 8001)
    registry = json.loads((repo / "infra/deployments/example-hpc.json").read_text())
    entries = registry["endpoints"][0]["models"]

    assert len(entries) == len(specs) == 2
    for entry, spec in zip(entries, specs, strict=True):
        engine = entry["engine"]
        assert engine["model"] == spec.served_model_name
        assert engine["base_url"] == f"http://127.0.0.1:{spec.port}/v1"
        # The registry says what the model can do; the launcher must start vLLM to do it.
        assert engine.get("tool_call_parser") == spec.tool_call_parser
        assert engine.get("reasoning_parser") == spec.reasoning_parser
        assert entry["context_length"] == spec.max_model_len
