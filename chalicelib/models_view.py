"""``GET /v1/models/{model}``: one model object, as ``GET /v1/models`` lists it.

OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) plus the gateway's fenced
extras: ``capabilities`` (what the registry says the model can do: the routes it serves, tools,
structured outputs, reasoning, its context length; ``chalicelib/registry.py``) and, where the
fleet is known, ``status`` (``chalicelib/fleet.py``). The OpenAI SDK keeps extras in
``model_extra``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from chalicelib.access import may_use
from chalicelib.auth import Principal
from chalicelib.errors import ModelNotFoundError
from chalicelib.registry import ModelDeployment, Registry


def model_object(registry: Registry, deployment: ModelDeployment) -> dict[str, Any]:
    return {
        "id": deployment.model,
        "object": "model",
        "created": 0,
        "owned_by": deployment.owned_by,
        "capabilities": registry.capabilities(deployment.model),
    }


def model_id_from_path(*segments: str) -> str:
    """The model id from its path segments.

    Ids hold a slash (``first/tiny-chat``). The OpenAI SDK sends it encoded
    (``/v1/models/first%2Ftiny-chat``): Chalice's local gateway passes the parameter still
    encoded, and API Gateway may pass it either way; curl users type the slash literally, which
    arrives as two segments. Model ids never hold ``%``, so unquoting is safe either way.
    """
    return "/".join(unquote(s) for s in segments)


def retrieve_model(registry: Registry, principal: Principal, model_id: str) -> dict[str, Any]:
    """The model, if the caller may use it; otherwise exactly the answer for a missing one."""
    deployment = registry.model(model_id)
    if deployment is None or not may_use(principal, deployment.access):
        raise ModelNotFoundError(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
        )
    return model_object(registry, deployment)
