"""``GET /v1/models/{model}``: the caller's models, by id, and 404 for any other."""

from __future__ import annotations

import pytest

from chalicelib.auth import Principal
from chalicelib.errors import ModelNotFoundError
from chalicelib.models_view import model_id_from_path, retrieve_model
from chalicelib.registry import Registry

REGISTRY = Registry.from_dict(
    {
        "endpoints": [
            {
                "name": "e",
                "endpoint_id": "e",
                "models": [
                    {"model": "first/tiny-chat", "owned_by": "first", "engine": {}},
                    {"model": "lab/secret", "engine": {}, "access": {"groups": ["lab"]}},
                ],
            }
        ]
    }
)
ALICE = Principal(id="alice", username="alice")


def test_a_model_is_the_same_object_the_list_shows() -> None:
    assert retrieve_model(REGISTRY, ALICE, "first/tiny-chat") == {
        "id": "first/tiny-chat",
        "object": "model",
        "created": 0,
        "owned_by": "first",
    }


@pytest.mark.parametrize("model_id", ["no/such-model", "lab/secret", "first"])
def test_a_missing_model_and_one_the_caller_may_not_use_answer_alike(model_id: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        retrieve_model(REGISTRY, ALICE, model_id)
    assert info.value.STATUS_CODE == 404 and info.value.code == "model_not_found"
    assert "does not exist" in info.value.message


def test_a_member_of_the_group_sees_the_restricted_model() -> None:
    member = Principal(id="bob", username="bob", groups=frozenset({"lab"}))
    assert retrieve_model(REGISTRY, member, "lab/secret")["id"] == "lab/secret"


@pytest.mark.parametrize(
    ("segments", "model_id"),
    [
        (("first%2Ftiny-chat",), "first/tiny-chat"),  # the OpenAI SDK, as Chalice passes it
        (("first%2ftiny-chat",), "first/tiny-chat"),
        (("first/tiny-chat",), "first/tiny-chat"),  # API Gateway, if it decodes
        (("first", "tiny-chat"), "first/tiny-chat"),  # curl with a literal slash
        (("gpt-4o",), "gpt-4o"),
    ],
)
def test_the_model_id_is_read_from_the_path_however_the_slash_arrives(
    segments: tuple[str, ...], model_id: str
) -> None:
    assert model_id_from_path(*segments) == model_id
