"""Shared pieces of the OpenAI request models and the one place bodies are parsed."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.errors import BadRequestError


class OpenAIModel(BaseModel):
    # Permissive like vLLM: unknown fields pass through to the engine untouched.
    model_config = ConfigDict(extra="allow")


class GatewayRequest(OpenAIModel):
    """A request the gateway queues for an engine: names its model, says what the engine gets."""

    model: str = Field(min_length=1)

    def engine_body(self) -> dict[str, Any]:
        """The body the engine receives: what the client sent, minus gateway-only fields."""
        return self.model_dump(exclude_none=True, exclude={"stream", "stream_options"})


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class SamplingFields(GatewayRequest):
    """Fields chat and completions share, in the order of the API reference."""

    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Informational only: the gateway never trusts identity fields from the body.
    user: str | None = None


M = TypeVar("M", bound=BaseModel)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def parse_body(raw: bytes | None, model: type[M]) -> M:
    """Parse a JSON request body into ``model``; any problem is a 400 naming the field."""
    if not raw:
        raise BadRequestError("The request body is empty; expected a JSON object.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequestError("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(tuple(first["loc"]))
        where = f" ('{param}')" if param else ""
        raise BadRequestError(f"Invalid request{where}: {first['msg']}", param=param) from exc
