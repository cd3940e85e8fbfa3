"""``POST /v1/completions`` (legacy) request model."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from chalicelib.errors import BadRequestError
from chalicelib.protocol.bounds import (
    MAX_BEST_OF,
    MAX_COMPLETION_LOGPROBS,
    MAX_PROMPTS,
    MAX_SEQUENCES,
)
from chalicelib.protocol.common import SamplingFields, check_token_ids

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_shape(cls, v: Prompt) -> Prompt:
        if isinstance(v, str):
            return v
        if not v:
            raise ValueError("prompt must not be an empty list")
        if all(isinstance(x, int) for x in v):
            check_token_ids(v)
            return v
        if len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts are allowed per request")
        for row in v:
            if isinstance(row, list):
                check_token_ids(row)
        return v

    def rows(self) -> int:
        """Prompts in the batch: a list of strings or of token lists is one row each."""
        p = self.prompt
        if isinstance(p, str) or all(isinstance(x, int) for x in p):
            return 1
        return len(p)

    @model_validator(mode="after")
    def _sequences_bounded(self) -> CompletionRequest:
        per_prompt = max(self.n or 1, self.best_of or 1)
        if self.rows() * per_prompt > MAX_SEQUENCES:
            # Raised as is (pydantic passes non-ValueErrors through) to name the field.
            raise BadRequestError(
                f"Invalid request ('n'): {self.rows()} prompts × {per_prompt} choices each is "
                f"more than the {MAX_SEQUENCES} sequences allowed per request.",
                param="n",
            )
        return self
