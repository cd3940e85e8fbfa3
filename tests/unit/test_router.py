"""Routing picks the least-loaded endpoint relative to its capacity."""

import pytest

from chalicelib import router
from chalicelib.errors import ModelNotFoundError
from chalicelib.registry import Endpoint, ModelDeployment

DEP = ModelDeployment("m", "o", ("chat_completions",), {"kind": "transformers"})


def endpoint(name: str, capacity: int) -> Endpoint:
    return Endpoint(name, name, "globus", capacity, {"chat_completions": "f"}, (DEP,))


def test_least_loaded_relative_to_capacity_wins() -> None:
    a, b = endpoint("a", 4), endpoint("b", 16)
    chosen, _ = router.choose([(a, DEP), (b, DEP)], {"a": 1, "b": 2})
    assert chosen.name == "b"


def test_no_candidate_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError):
        router.choose([], {})
