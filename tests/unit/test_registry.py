"""The deployment registry files load, expand ${VAR}, and answer model lookups."""

from pathlib import Path

from chalicelib.registry import Registry
from chalicelib.settings import REPO_ROOT

LOCAL = REPO_ROOT / "infra" / "deployments" / "local.json"


def test_local_registry_serves_tiny_chat_and_minilm_on_two_clusters() -> None:
    env = {"FIRST_HOME": "/data/first", "FIRST_LOCAL_ENDPOINT_B_URL": "http://127.0.0.1:9"}
    reg = Registry.load(LOCAL, env)
    assert reg.model_ids() == [
        "first/tiny-chat",
        "first/tiny-agent",
        "first/tiny-vision",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]
    (a, dep), (b, _) = reg.candidates("first/tiny-chat", "chat_completions")
    assert (a.name, b.name) == ("local-a", "local-b")
    assert a.executor == b.executor == "local" and a.max_inflight > b.max_inflight
    assert b.url == "http://127.0.0.1:9"
    assert dep.engine["path"] == "/data/first/models/tiny-chat"
    assert reg.candidates("first/tiny-chat", "embeddings") == []
    assert reg.candidates("nope", "chat_completions") == []


def test_unregistered_functions_are_not_candidates(tmp_path: Path) -> None:
    example = Registry.load(REPO_ROOT / "infra" / "deployments" / "example-hpc.json")
    # Function ids are null until `first functions register` fills them in.
    assert example.candidates("meta-llama/Llama-3.1-8B-Instruct", "chat_completions") == []
