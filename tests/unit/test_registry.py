"""The deployment registry files load, expand ${VAR}, and answer model lookups."""

from pathlib import Path

from chalicelib.registry import Registry
from chalicelib.settings import REPO_ROOT

LOCAL = REPO_ROOT / "infra" / "deployments" / "local.json"


def test_local_registry_serves_tiny_chat_and_minilm() -> None:
    reg = Registry.load(LOCAL, {"FIRST_HOME": "/data/first"})
    assert reg.model_ids() == ["first/tiny-chat", "sentence-transformers/all-MiniLM-L6-v2"]
    ((endpoint, dep),) = reg.candidates("first/tiny-chat", "chat_completions")
    assert endpoint.executor == "local"
    assert dep.engine["path"] == "/data/first/models/tiny-chat"
    assert reg.candidates("first/tiny-chat", "embeddings") == []
    assert reg.candidates("nope", "chat_completions") == []


def test_unregistered_functions_are_not_candidates(tmp_path: Path) -> None:
    example = Registry.load(REPO_ROOT / "infra" / "deployments" / "example-hpc.json")
    # Function ids are null until `first functions register` fills them in.
    assert example.candidates("meta-llama/Llama-3.1-8B-Instruct", "chat_completions") == []
