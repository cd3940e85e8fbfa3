"""The whole stack, brought up as ``make up`` does (own ports and home), driven by the OpenAI SDK.

One stack for the session: moto server, resources from the template, compute endpoint with warm
engines, a poller, the API. The registry is ``local.json`` plus one deliberately broken model
(its weights do not exist) so engine failures travel the real path, one model only the group
``lab`` may use, one served cold (not preheated) and one whose id ends in ``/warm``. Rate limits apply to one user only (``LIMITED_USER``), so the rest of the suite
runs unlimited. Visibility timeout 5 s, so the poller-kill and poison tests finish in seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from offline.background import BackgroundStack
from offline.stack import StackConfig

# Weights that are not there: the model cannot load (503, unavailable).
BROKEN_MODEL = "first/broken"
# A model directory whose config is garbage: loading raises inside the HPC function (500).
CORRUPT_MODEL = "first/corrupt"
TINY = "first/tiny-chat"
# The tiny model again (same engine, so nothing more to load), for the group "lab" only.
LAB_MODEL = "first/tiny-chat-lab"
LAB_GROUP = "lab"
# An engine of its own (the tiny weights under another name), not preheated: its one deployment
# (on local-a) stays cold until a request or a warm-up loads it (seconds: the weights are tiny).
COLD_MODEL = "first/tiny-chat-cold"
# The tiny model under an id whose second segment is the warm-up route's last one.
WARM_NAMED_MODEL = "acme/warm"
LIMITED_USER = "limited"
LIMITS = {
    "users": {
        LIMITED_USER: {"requests_per_minute": 2, "tokens_per_minute": 100000, "max_concurrent": 4}
    }
}


def write_registry(path: Path) -> Path:
    data = json.loads((REPO_ROOT / "infra" / "deployments" / "local.json").read_text())
    data["endpoints"][0]["models"].append(
        {
            "model": BROKEN_MODEL,
            "owned_by": "first",
            "endpoints": ["chat_completions", "completions"],
            "engine": {"kind": "transformers", "model": BROKEN_MODEL, "path": "/nonexistent/model"},
        }
    )
    corrupt = path.parent / "corrupt-model"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "config.json").write_text("{ this is not json")
    data["endpoints"][0]["models"].append(
        {
            "model": CORRUPT_MODEL,
            "owned_by": "first",
            "endpoints": ["chat_completions"],
            "engine": {"kind": "transformers", "model": CORRUPT_MODEL, "path": str(corrupt)},
        }
    )
    tiny = next(m for m in data["endpoints"][0]["models"] if m["model"] == TINY)
    data["endpoints"][0]["models"].append(
        {**tiny, "model": LAB_MODEL, "access": {"groups": [LAB_GROUP]}}
    )
    cold_engine = {**tiny["engine"], "model": COLD_MODEL}
    data["endpoints"][0]["models"].append({**tiny, "model": COLD_MODEL, "engine": cold_engine})
    data["endpoints"][0]["models"].append({**tiny, "model": WARM_NAMED_MODEL})
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundStack]:
    # A home of its own: two suites (or a suite and `make up`) never share logs or state.
    home = tmp_path_factory.mktemp("first-home")
    config_dir = tmp_path_factory.mktemp("registry")
    registry = write_registry(config_dir / "local.json")
    limits = config_dir / "limits.json"
    limits.write_text(json.dumps(LIMITS))
    config = StackConfig.on_free_ports(
        home,
        visibility_timeout_s=5,
        cold_models=(COLD_MODEL,),
        extra_env={
            "FIRST_REGISTRY_PATH": str(registry),
            "FIRST_LIMITS_PATH": str(limits),
            "FIRST_WAIT_TIMEOUT_S": "20",
            # A stopped endpoint shows offline within seconds (probes come every 5 s).
            "FIRST_ENDPOINT_STALE_S": "12",
            # test_federation's circuit cycle. A request sent to a stopped local endpoint fails
            # only after the executor's 10 s wait for a restart, and local-b holds 2 of them: one
            # pair of failures fits before it goes stale (12 s), so 2 open it, not 3; its probe
            # goes through after 10 s, not 30.
            "FIRST_CIRCUIT_FAILURES_TO_OPEN": "2",
            "FIRST_CIRCUIT_COOLDOWN_S": "10",
            # Batch: small shards (several per test batch), a short lease on batch messages.
            "FIRST_BATCH_SHARD_LINES": "4",
            "FIRST_BATCH_VISIBILITY_TIMEOUT_S": "5",
            # The poller and batch worker write their EMF metrics every second (test_usage).
            "FIRST_METRICS_FLUSH_INTERVAL_S": "1",
        },
    )
    # Started as `make up` starts it: its own supervisor, so kill -9s meet the real thing.
    s = BackgroundStack(config)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def client(stack: BackgroundStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.config.api_url}/v1", api_key=stack.api_key, max_retries=0)


@pytest.fixture(scope="session")
def services(stack: BackgroundStack) -> Iterator[Services]:
    env = stack.config.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield Services(Settings())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def create_key(stack: BackgroundStack, user: str, *options: str) -> str:
    """A key for another user, made with the CLI as an operator would."""
    return stack.first("keys", "create", "--user", user, *options)
