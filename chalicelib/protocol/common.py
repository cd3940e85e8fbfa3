"""Shared pieces of the OpenAI request models and the one place bodies are parsed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.errors import BadRequestError
from chalicelib.protocol.bounds import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    LOGIT_BIAS_MAX,
    LOGIT_BIAS_MIN,
    MAX_JSON_DEPTH,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
)


class OpenAIModel(BaseModel):
    # Permissive like vLLM: unknown fields pass through to the engine untouched.
    model_config = ConfigDict(extra="allow")


class GatewayRequest(OpenAIModel):
    """A request the gateway queues for an engine: names its model, says what the engine gets."""

    model: str = Field(min_length=1)

    def engine_body(self) -> dict[str, Any]:
        """The body the engine receives: what the client sent, minus gateway-only fields."""
        return self.model_dump(exclude_none=True, exclude={"stream", "stream_options"})

    def stream_dialect(self) -> dict[str, Any]:
        """What a streamed request's record carries for its stream dialect
        (``chalicelib.protocol.dialects``): ``{"dialect", "state"}``; chat's is empty."""
        return {}

    def capabilities_used(self) -> dict[str, str]:
        """The registry capabilities this request needs (``Registry.supports``), each with the
        field that asks for it: a model without one answers 400 naming that field."""
        return {}

    def image_parts(self) -> list[tuple[str, dict[str, Any]]]:
        """The request's image content parts, each with the param naming it (none here)."""
        return []


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class SamplingFields(GatewayRequest):
    """Fields chat and completions share, in the order of the API reference."""

    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # The model's own ceiling is checked against the registry (chalicelib/ceilings.py).
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Which requests share a prompt prefix (a conversation): they go to the same endpoint
    # (chalicelib/affinity.py). Hashed with the user and model before it leaves the API.
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Informational only: the gateway never trusts identity fields from the body.
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_bounded(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        for key, bias in v.items():
            if not key.isascii() or not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids, not {key[:32]!r}")
            if not LOGIT_BIAS_MIN <= bias <= LOGIT_BIAS_MAX:
                raise ValueError(
                    f"biases must be between {LOGIT_BIAS_MIN:g} and {LOGIT_BIAS_MAX:g}"
                )
        return v

    @field_validator("stop")
    @classmethod
    def _stop_bounded(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_CHARS} characters")
        return v


def check_token_ids(tokens: list[Any]) -> None:
    """Token ids are int32 in every engine; a larger one would overflow there (a 500)."""
    if any(not 0 <= t <= INT32_MAX for t in tokens):
        raise ValueError(f"token ids must be between 0 and {INT32_MAX}")


M = TypeVar("M", bound=BaseModel)

# A union member's tag in a pydantic error location (``'list[str]'``, ``'str'``), not a field.
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [
        str(p)
        for p in loc
        if not str(p).startswith("function-") and "[" not in str(p) and str(p) not in _UNION_TAGS
    ]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


# A JSON string (escapes included), and every character that is not a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# \uD800–\uDFFF: half of a surrogate pair, valid only with its other half.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def nesting_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON ``text`` nest, found without parsing it."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _non_finite(name: str) -> NoReturn:
    raise BadRequestError(f"The request body contains {name}; JSON numbers must be finite.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise BadRequestError(f"The number {text[:40]} is out of range; numbers must be finite.")
    return value


def _strings(data: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string in parsed JSON (keys too), with its location."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, str):
            yield loc, node
        elif isinstance(node, dict):
            for key, value in node.items():
                yield loc, key
                stack.append(((*loc, key), value))
        elif isinstance(node, list):
            stack.extend(((*loc, i), value) for i, value in enumerate(node))


def _check_unicode(text: str, data: Any) -> None:
    """A lone surrogate (``"\\ud800"``) parses, but no engine or UTF-8 encoder can take it."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    for loc, value in _strings(data):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            param = _param(loc)
            where = f" ('{param}')" if param else ""
            raise BadRequestError(
                f"Invalid request{where}: the text contains a lone UTF-16 surrogate "
                f"({value[exc.start]!r}), which is not valid Unicode.",
                param=param,
            ) from exc


def load_json(raw: bytes) -> Any:
    """Parse a request body, refusing what would make the parser or an engine fail: nesting
    deeper than ``MAX_JSON_DEPTH``, non-finite numbers, text that is not Unicode."""
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"The request body is not valid UTF-8: {exc}") from exc
    if nesting_depth(text) > MAX_JSON_DEPTH:
        raise BadRequestError(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        data = json.loads(text, parse_constant=_non_finite, parse_float=_finite_float)
    except ValueError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    _check_unicode(text, data)
    return data


def parse_body(raw: bytes | None, model: type[M]) -> M:
    """Parse a JSON request body into ``model``; any problem is a 400 naming the field."""
    if not raw:
        raise BadRequestError("The request body is empty; expected a JSON object.")
    data = load_json(raw)
    if not isinstance(data, dict):
        raise BadRequestError("The request body must be a JSON object.")
    return validate(data, model)


def validate(data: dict[str, Any], model: type[M]) -> M:
    """Validate parsed JSON into ``model``; any problem is a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(tuple(first["loc"]))
        where = f" ('{param}')" if param else ""
        raise BadRequestError(f"Invalid request{where}: {first['msg']}", param=param) from exc
