"""Batched generation for the transformers engine: many batch lines per forward pass.

Each line is prepared exactly as ``TransformersEngine.chat_completions`` / ``completions``
prepare one request (template, tokens, sampling checks); lines whose sampling parameters are
equal then share ``TransformersEngine._generate`` calls of up to ``max_rows`` prompts (left
padding puts every row's next token at the same position). A line the engine refuses gets its
``EngineError``; a line asking for several choices or prompts runs on its own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.transformers_engine import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_COMPLETION_MAX_TOKENS,
    TransformersEngine,
    _Choice,
    _reject_unsupported,
    _Sampling,
    _usage,
)

Outcome = dict[str, Any] | EngineError


def _prepare(
    engine: TransformersEngine, kind: str, body: dict[str, Any]
) -> tuple[list[int], _Sampling]:
    if kind == "chat_completions":
        engine._require_generative("chat completions")
        _reject_unsupported(body, ("tools", "functions", "logprobs", "top_logprobs", "audio"))
        prompt = engine._render_chat(body.get("messages") or [])
        ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        params = engine._sampling(body, max_tokens, len(ids), DEFAULT_CHAT_MAX_TOKENS, "messages")
        return list(ids), params
    engine._require_generative("completions")
    _reject_unsupported(body, ("logprobs", "echo", "suffix"))
    if body.get("best_of") not in (None, 1, body.get("n") or 1):
        raise EngineError("best_of is not supported by this engine", param="best_of")
    prompts = engine._prompt_ids(body.get("prompt"))
    if len(prompts) != 1:
        raise _Alone
    params = engine._sampling(
        body, body.get("max_tokens"), len(prompts[0]), DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
    )
    return prompts[0], params


class _Alone(Exception):
    """This line runs by itself (several prompts or choices)."""


def _response(engine: TransformersEngine, kind: str, ids: list[int], c: _Choice) -> dict[str, Any]:
    usage = _usage(len(ids), c.completion_tokens)
    if kind == "chat_completions":
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": engine.served_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": usage,
        }
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": engine.served_name,
        "choices": [
            {"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
        ],
        "usage": usage,
    }


def generate_many(
    engine: TransformersEngine, kind: str, bodies: list[dict[str, Any]], *, max_rows: int = 32
) -> list[Outcome]:
    out: list[Outcome | None] = [None] * len(bodies)
    groups: dict[str, list[tuple[int, list[int], _Sampling]]] = {}
    single = getattr(engine, kind)
    for i, body in enumerate(bodies):
        try:
            ids, params = _prepare(engine, kind, body)
            if params.n != 1:
                raise _Alone
        except EngineError as exc:
            out[i] = exc
            continue
        except _Alone:
            try:
                out[i] = dict(single(body))
            except EngineError as exc:
                out[i] = exc
            continue
        groups.setdefault(repr(params), []).append((i, ids, params))
    for members in groups.values():
        # Similar lengths side by side: less padding per forward pass.
        members.sort(key=lambda m: len(m[1]))
        for start in range(0, len(members), max(1, max_rows)):
            chunk = members[start : start + max_rows]
            choices = engine._generate([ids for _, ids, _ in chunk], chunk[0][2])
            for (i, ids, _), choice in zip(chunk, choices, strict=True):
                out[i] = _response(engine, kind, ids, choice)
    return [o if o is not None else EngineError("line was not run") for o in out]
