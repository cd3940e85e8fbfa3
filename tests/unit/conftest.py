"""Shared unit-test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the unit tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default local chat model (tiny random Llama), built once per test session."""
    from hpc_functions.build_tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """first/tiny-agent: the tiny model ending its turn within a few tokens."""
    from hpc_functions.build_tiny_model import build_agent

    return build_agent(tmp_path_factory.mktemp("models") / "tiny-agent")
