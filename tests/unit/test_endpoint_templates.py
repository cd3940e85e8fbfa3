"""The Globus Compute endpoint templates render, parse, and start the node the way we expect.

Rendering follows globus-compute-endpoint's ``render_config_user_template``: a sandboxed Jinja
environment with ``StrictUndefined`` and string values JSON-quoted before they reach the
template (its guard against YAML injection), plus its ``shell_escape`` filter. That function
wants a running core endpoint's config and a mapped POSIX identity, so its rules are restated
here (the package itself is in the dev venv: requirements-endpoint.txt).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from jinja2.sandbox import SandboxedEnvironment

TEMPLATES = Path(__file__).resolve().parents[2] / "infra" / "globus-compute"
PBS = ["pbs-interactive", "pbs-batch"]
SLURM = ["slurm-interactive", "slurm-batch"]
REQUIRED = {
    "account": "FIRSTproj",
    "walltime": "12:00:00",
    "venv_path": "/home/svc/venvs/first node",
    "repo_path": "/home/svc/first",
    "models_config": "/home/svc/first/models.json",
}


def _shell_escape(val: Any) -> Any:
    if not isinstance(val, str):
        return val
    loaded = json.loads(val)
    return json.dumps(shlex.quote(loaded)) if isinstance(loaded, str) else val


def render(name: str, **values: Any) -> str:
    """Render one template as a Globus Compute endpoint would, with the scheduler's queue."""
    scheduler_key = "queue" if name.startswith("pbs") else "partition"
    opts = {**REQUIRED, scheduler_key: "gpu-debug", **values}
    opts = {k: json.dumps(v) if isinstance(v, str) else v for k, v in opts.items()}
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.filters["shell_escape"] = _shell_escape
    return env.from_string((TEMPLATES / f"{name}.yaml.j2").read_text()).render(**opts)


def load(name: str, **values: Any) -> dict[str, Any]:
    config = yaml.safe_load(render(name, **values))
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("name", PBS + SLURM)
def test_template_renders_to_a_globus_compute_engine_config(name: str) -> None:
    config = load(name)

    engine = config["engine"]
    provider = engine["provider"]
    assert engine["type"] == "GlobusComputeEngine"
    assert isinstance(engine["max_workers_per_node"], int)
    assert isinstance(engine["job_status_kwargs"]["max_idletime"], int)
    assert provider["launcher"] == {"type": "SimpleLauncher"}
    assert provider["account"] == "FIRSTproj"
    for key in ("nodes_per_block", "init_blocks", "min_blocks", "max_blocks"):
        assert isinstance(provider[key], int), key
    assert isinstance(config["idle_heartbeats_soft"], int)
    assert isinstance(config["idle_heartbeats_hard"], int)


@pytest.mark.parametrize("name", PBS)
def test_pbs_templates_use_pbspro_with_queue_and_gpus(name: str) -> None:
    provider = load(name, gpus_per_node=8)["engine"]["provider"]

    assert provider["type"] == "PBSProProvider"
    assert provider["queue"] == "gpu-debug"
    assert provider["select_options"] == "ngpus=8"
    assert "partition" not in provider


@pytest.mark.parametrize("name", SLURM)
def test_slurm_templates_use_slurm_with_partition_and_gpus(name: str) -> None:
    provider = load(name, gpus_per_node=2)["engine"]["provider"]

    assert provider["type"] == "SlurmProvider"
    assert provider["partition"] == "gpu-debug"
    assert provider["scheduler_options"] == "#SBATCH --gpus-per-node=2"
    assert "queue" not in provider


@pytest.mark.parametrize("name", PBS + SLURM)
def test_walltime_stays_a_string(name: str) -> None:
    # YAML 1.1 reads a bare 12:00:00 as the base-60 integer 43200.
    assert load(name)["engine"]["provider"]["walltime"] == "12:00:00"


@pytest.mark.parametrize("name", ["pbs-interactive", "slurm-interactive"])
def test_interactive_templates_keep_a_block_warm(name: str) -> None:
    config = load(name)
    provider = config["engine"]["provider"]

    assert provider["min_blocks"] >= 1
    assert provider["init_blocks"] == provider["min_blocks"]
    assert config["idle_heartbeats_soft"] == 0


@pytest.mark.parametrize("name", ["pbs-batch", "slurm-batch"])
def test_batch_templates_scale_to_zero(name: str) -> None:
    config = load(name)
    provider = config["engine"]["provider"]
    hot = load(name.replace("batch", "interactive"))

    assert provider["min_blocks"] == 0 and provider["init_blocks"] == 0
    assert provider["max_blocks"] >= 1
    max_idle = config["engine"]["job_status_kwargs"]["max_idletime"]
    assert max_idle < hot["engine"]["job_status_kwargs"]["max_idletime"]
    assert config["idle_heartbeats_soft"] > 0


@pytest.mark.parametrize("name", PBS + SLURM)
def test_hot_or_cold_is_a_matter_of_values(name: str) -> None:
    provider = load(name, min_blocks=2, max_blocks=4, max_idletime=60)["engine"]["provider"]

    assert (provider["min_blocks"], provider["init_blocks"], provider["max_blocks"]) == (2, 2, 4)


@pytest.mark.parametrize("name", PBS + SLURM)
@pytest.mark.parametrize("missing", list(REQUIRED))
def test_missing_required_value_fails_to_render(name: str, missing: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    scheduler_key = "queue" if name.startswith("pbs") else "partition"
    opts = {scheduler_key: "q", **values}
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    template = env.from_string((TEMPLATES / f"{name}.yaml.j2").read_text())

    with pytest.raises(jinja2.UndefinedError):
        template.render(**{k: json.dumps(v) for k, v in opts.items()})


def test_optional_site_settings_are_rendered() -> None:
    pbs = load(
        "pbs-interactive",
        scheduler_options="#PBS -l filesystems=home:eagle",
        address_ifname="bond0",
        cpus_per_node=64,
        amqp_port=443,
    )
    slurm = load("slurm-batch", qos="normal", constraint="a100", scheduler_options="#SBATCH -C x")

    assert pbs["engine"]["provider"]["scheduler_options"] == "#PBS -l filesystems=home:eagle"
    assert pbs["engine"]["provider"]["cpus_per_node"] == 64
    assert pbs["engine"]["address"] == {"type": "address_by_interface", "ifname": "bond0"}
    assert pbs["amqp_port"] == 443
    assert "address" not in load("pbs-batch")["engine"]
    assert slurm["engine"]["provider"]["qos"] == "normal"
    assert slurm["engine"]["provider"]["constraint"] == "a100"
    assert slurm["engine"]["provider"]["scheduler_options"] == "#SBATCH -C x"


def _fake_venv(tmp_path: Path, launcher_exit: int) -> tuple[Path, Path]:
    """A venv whose ``python`` records PYTHONPATH and its argv instead of starting vLLM."""
    venv = tmp_path / "venvs" / "first node"
    (venv / "bin").mkdir(parents=True)
    record = tmp_path / "record.txt"
    # One argument per line, so a path with a space shows up as one argument.
    (venv / "bin" / "python").write_text(
        "#!/bin/sh\n"
        f'echo "$PYTHONPATH" > {record}\n'
        f'echo "threads=$OMP_NUM_THREADS" >> {record}\n'
        f'for arg in "$@"; do echo "$arg"; done >> {record}\n'
        f"exit {launcher_exit}\n"
    )
    (venv / "bin" / "python").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    return venv, record


@pytest.mark.parametrize("name", ["pbs-interactive", "slurm-batch"])
def test_worker_init_activates_the_venv_and_runs_the_launcher(tmp_path: Path, name: str) -> None:
    venv, record = _fake_venv(tmp_path, launcher_exit=0)
    config = load(name, venv_path=str(venv), vllm_port=8101, vllm_bin="/opt/vllm venv/bin/vllm")
    script = config["engine"]["provider"]["worker_init"]
    script += '\necho "workers-start $OMP_NUM_THREADS $MKL_NUM_THREADS"\n'

    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )

    assert done.returncode == 0, done.stderr
    # The worker pool (started after worker_init, in its environment) gets one thread per
    # worker; vLLM, started by the launcher before that, is left its own.
    assert done.stdout.strip() == "workers-start 1 1"
    pythonpath, threads, *argv = record.read_text().splitlines()
    # hpc_functions is imported by reference on the workers: from the checkout on PYTHONPATH.
    assert pythonpath == "/home/svc/first"
    assert threads == "threads="
    assert argv == [
        "-m",
        "hpc_functions.launcher",
        "--config",
        "/home/svc/first/models.json",
        "--base-port",
        "8101",
        "--timeout",
        "1800",
        "--vllm",
        "/opt/vllm venv/bin/vllm",
    ]


def test_worker_init_stops_the_job_when_a_model_fails_to_start(tmp_path: Path) -> None:
    venv, _ = _fake_venv(tmp_path, launcher_exit=1)
    config = load("pbs-batch", venv_path=str(venv))
    script = config["engine"]["provider"]["worker_init"] + "\necho workers-start\n"

    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )

    assert done.returncode == 1
    assert "workers-start" not in done.stdout


@pytest.mark.parametrize("name", PBS + SLURM)
def test_worker_threads_sets_the_workers_thread_count(tmp_path: Path, name: str) -> None:
    venv, _ = _fake_venv(tmp_path, launcher_exit=0)
    config = load(name, venv_path=str(venv), worker_threads=4)
    script = config["engine"]["provider"]["worker_init"]
    script += '\necho "$OMP_NUM_THREADS $MKL_NUM_THREADS"\n'

    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4 4"
