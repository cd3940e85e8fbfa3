"""Per-model ceilings: what the registry lets one request ask of a model's engine.

The request-shape ceilings (stop sequences, n, prompts, logit_bias …) are the protocol's
(``chalicelib/protocol/bounds.py``); this is the one that depends on the model.
"""

from __future__ import annotations

from chalicelib.errors import BadRequestError
from chalicelib.protocol.common import GatewayRequest
from chalicelib.registry import ModelDeployment


def check_max_tokens(deployment: ModelDeployment | None, req: GatewayRequest) -> None:
    """400 when the request asks for more completion tokens than the model's ceiling.

    As OpenAI answers: ``invalid_value`` naming ``max_tokens`` or ``max_completion_tokens``.
    A missing deployment is left to authorization (404).
    """
    if deployment is None:
        return
    for param in ("max_completion_tokens", "max_tokens"):
        asked = getattr(req, param, None)
        if isinstance(asked, int) and asked > deployment.max_tokens:
            raise BadRequestError(
                f"{param} is too large: {asked}. The model '{deployment.model}' supports at "
                f"most {deployment.max_tokens} completion tokens, whereas you provided {asked}.",
                param=param,
                code="invalid_value",
            )
