"""``POST /v1/embeddings`` request model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from chalicelib.protocol.bounds import MAX_DIMENSIONS, MAX_EMBEDDING_INPUTS
from chalicelib.protocol.common import GatewayRequest, check_token_ids

# OpenAI's own bound on inputs per request.
MAX_INPUTS = MAX_EMBEDDING_INPUTS

Input = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(GatewayRequest):
    input: Input
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input_shape(cls, v: Input) -> Input:
        if isinstance(v, str):
            if not v:
                raise ValueError("input must not be an empty string")
            return v
        if not v:
            raise ValueError("input must not be an empty list")
        if len(v) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs are allowed per request")
        if any(isinstance(x, str) and not x for x in v):
            raise ValueError("input strings must not be empty")
        if any(isinstance(x, list) and not x for x in v):
            raise ValueError("token arrays must not be empty")
        if all(isinstance(x, int) for x in v):
            check_token_ids(v)
        for row in v:
            if isinstance(row, list):
                check_token_ids(row)
        return v
