"""Routing picks the least-loaded endpoint with a closed circuit."""

import pytest

from chalicelib import router
from chalicelib.errors import ModelNotFoundError, UpstreamUnavailableError
from chalicelib.registry import Endpoint, ModelDeployment

DEP = ModelDeployment("m", "o", ("chat_completions",), {"kind": "transformers"})


def endpoint(name: str, capacity: int) -> Endpoint:
    return Endpoint(name, name, "globus", capacity, {"chat_completions": "f"}, (DEP,))


def test_least_loaded_relative_to_capacity_wins() -> None:
    a, b = endpoint("a", 4), endpoint("b", 16)
    chosen, _ = router.choose([(a, DEP), (b, DEP)], {"a": 1, "b": 2})
    assert chosen.name == "b"


def test_open_circuit_is_skipped_and_all_open_is_unavailable() -> None:
    a, b = endpoint("a", 4), endpoint("b", 4)
    assert router.choose([(a, DEP), (b, DEP)], {}, frozenset({"a"}))[0].name == "b"
    with pytest.raises(UpstreamUnavailableError):
        router.choose([(a, DEP)], {}, frozenset({"a"}))


def test_no_candidate_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError):
        router.choose([], {})
