"""``GET /v1/models`` through the OpenAI SDK: each model says what it can do (its fenced
``capabilities`` extra, which the SDK keeps in ``model_extra``), and the OpenAI fields stay exact."""

from __future__ import annotations

from openai import OpenAI

from tests.e2e.conftest import TINY

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_retrieve_and_list_carry_each_models_capabilities(client: OpenAI) -> None:
    chat = client.models.retrieve(TINY)
    listed = {m.id: m for m in client.models.list()}

    assert (chat.id, chat.object, chat.created, chat.owned_by) == (TINY, "model", 0, "first")
    assert chat.model_extra is not None
    assert chat.model_extra["capabilities"] == {
        "routes": ["chat", "completions"],
        "tools": True,
        "structured_outputs": True,
        "reasoning": False,
        "vision": False,
        "context_length": 32768,
    }
    assert listed[TINY].model_extra is not None
    assert listed[TINY].model_extra["capabilities"] == chat.model_extra["capabilities"]
    embed = listed[MINILM].model_extra
    assert embed is not None
    assert embed["capabilities"]["routes"] == ["embeddings"]
    assert not any(embed["capabilities"][k] for k in ("tools", "structured_outputs", "reasoning"))
    vision = listed["first/tiny-vision"].model_extra
    assert vision is not None
    assert (vision["capabilities"]["vision"], vision["capabilities"]["routes"]) == (True, ["chat"])
