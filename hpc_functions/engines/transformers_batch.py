"""Batched generation for the transformers engine: many batch lines per forward pass.

Each line goes through the engine's public preparation step (``engine.prepare``: template,
tokens, sampling checks, output constraint), exactly as a single request does; lines whose
sampling parameters are equal then share ``engine.generate`` calls of up to ``max_rows`` prompts
(left padding puts every row's next token at the same position), each row with its own
constraint (a ``response_format`` or tools line beside a free one). A line the engine refuses
gets its ``EngineError``; a line asking for several choices or prompts runs on its own, and so
does each line of a shared call that failed (a grammar one row's vocabulary cannot write), so
only the line at fault gets the error.
"""

from __future__ import annotations

from typing import Any

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.transformers_engine import Prepared, TransformersEngine

Outcome = dict[str, Any] | EngineError


def _alone(engine: TransformersEngine, prepared: Prepared) -> Outcome:
    try:
        return engine.response(prepared, engine.run(prepared))
    except EngineError as exc:
        return exc


def generate_many(
    engine: TransformersEngine, kind: str, bodies: list[dict[str, Any]], *, max_rows: int = 32
) -> list[Outcome]:
    out: list[Outcome | None] = [None] * len(bodies)
    groups: dict[str, list[tuple[int, Prepared]]] = {}
    for i, body in enumerate(bodies):
        try:
            prepared = engine.prepare(kind, body)
        except EngineError as exc:
            out[i] = exc
            continue
        # Images (model_inputs) are per request: such a line runs alone.
        if prepared.sampling.n != 1 or len(prepared.prompts) != 1 or prepared.model_inputs:
            out[i] = _alone(engine, prepared)
            continue
        groups.setdefault(repr(prepared.sampling), []).append((i, prepared))
    for members in groups.values():
        # Similar lengths side by side: less padding per forward pass.
        members.sort(key=lambda m: m[1].prompt_tokens)
        for start in range(0, len(members), max(1, max_rows)):
            chunk = members[start : start + max_rows]
            sampling = chunk[0][1].sampling
            try:
                rows = engine.generate(
                    [p.prompts[0] for _, p in chunk], sampling, [p.constraint for _, p in chunk]
                )
            except EngineError as exc:
                for i, prepared in chunk:
                    out[i] = exc if len(chunk) == 1 else _alone(engine, prepared)
                continue
            for (i, prepared), row in zip(chunk, rows, strict=True):
                choice = engine.finish(
                    row, sampling, prepared.constraint, named_tool=prepared.named_tool
                )
                out[i] = engine.response(prepared, [choice])
    return [o if o is not None else EngineError("line was not run") for o in out]
