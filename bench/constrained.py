"""Constrained decoding on the transformers engine: tokens/s with and without a schema, and what
the grammar costs per token.

    python -m bench.constrained [--runs 5] [--max-tokens 128] [--model-dir DIR]

The figures also go to ``bench/results/constrained.json`` (``--no-save`` skips it), from which
``python -m bench.report`` writes the table in docs/performance.md.

Runs the tiny offline model (built into DIR, default .first/models/tiny-llama) through the
engine's own sampler and ``generate``, plain and under each constraint, and prints decode tokens/s
and the logits processor's own time per token (its share of decode time; the goal is <= 10 %).
Prints figures; asserts nothing. ``generate`` here is also what the unit tests drive: it takes the
prompt and sampling from the engine's public preparation step (``engine.prepare_chat``) and runs
``generate`` itself, so that the grammar's processor can be timed on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList

from hpc_functions.engines.constrained import (
    GrammarLogitsProcessor,
    OutputConstraint,
    ParsedOutput,
    build_constraint,
    read_output,
)
from hpc_functions.engines.transformers_engine import TransformersEngine
from hpc_functions.engines.transformers_sampling import OpenAISampler

MESSAGES = [{"role": "user", "content": "Tell me about the weather in paris."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "report",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "temperature": {"type": "number"},
                        "tags": {"type": "array", "items": {"enum": ["sun", "rain", "wind"]}},
                    },
                    "required": ["city", "temperature", "tags"],
                    "additionalProperties": False,
                },
            },
        }
    },
    "tool_required": {"tools": [WEATHER], "tool_choice": "required"},
}


@dataclass
class Choice:
    output: ParsedOutput
    finish_reason: str
    token_ids: list[int]


class TimedProcessor:
    """Wraps a logits processor and adds up the time it takes."""

    def __init__(self, inner: GrammarLogitsProcessor) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = time.perf_counter()
        try:
            return self.inner(input_ids, scores)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def generate(
    engine: TransformersEngine,
    constraint: OutputConstraint | None | list[OutputConstraint | None],
    *,
    messages: list[dict[str, Any]] = MESSAGES,
    max_tokens: int = 48,
    seed: int = 0,
    temperature: float = 1.0,
    n: int = 1,
    timer: list[TimedProcessor] | None = None,
) -> list[Choice]:
    """The engine's chat generation with the constraint's processor before its sampler; a list
    of constraints gives one row each (mixed batch rows), otherwise ``n`` rows share one."""
    rows = constraint if isinstance(constraint, list) else [constraint] * n
    n = len(rows)
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "n": n,
    }
    prepared = engine.prepare_chat(body)
    ids, params = prepared.prompts[0], prepared.sampling
    input_ids = torch.tensor([ids] * n, device=engine.device)
    banned = [] if engine.pad_id in engine.eos_ids else [engine.pad_id]
    processors: list[Any] = []
    vocab = engine.vocabulary()
    if any(c is not None for c in rows):
        processor = GrammarLogitsProcessor(
            rows,
            vocab,
            prompt_len=len(ids),
            max_new_tokens=max_tokens,
            pad_id=engine.pad_id,
        )
        timed = TimedProcessor(processor)
        processors.append(timed)
        if timer is not None:
            timer.append(timed)
    processors.append(OpenAISampler(params, len(ids), banned, engine.device))
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=engine.eos_ids,
        pad_token_id=engine.pad_id,
    )
    with torch.inference_mode():
        output = engine.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        )
    choices = []
    for row, row_constraint in zip(output[:, len(ids) :].tolist(), rows, strict=True):
        ends = [i for i, t in enumerate(row) if t in engine.eos_ids or t == engine.pad_id]
        tokens = row[: ends[0]] if ends else row
        finish = "stop" if ends and row[ends[0]] in engine.eos_ids else "length"
        choices.append(Choice(read_output(row_constraint, tokens, vocab), finish, tokens))
    return choices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model-dir", default=".first/models/tiny-llama")
    parser.add_argument("--no-save", action="store_true", help="print only: no result file")
    args = parser.parse_args(argv)
    cases: list[dict[str, Any]] = []

    from hpc_functions.build_tiny_model import build

    path = build(Path(args.model_dir))
    engine = TransformersEngine({"kind": "transformers", "model": "tiny", "path": str(path)})
    started = time.perf_counter()
    engine.vocabulary()
    print(
        f"vocabulary: {len(engine.tokenizer)} tokens read in {time.perf_counter() - started:.3f} s"
    )
    print(
        f"{'case':<14} {'tokens':>7} {'tok/s':>8} {'ms/token':>9} {'grammar us/token':>17} "
        f"{'share':>6} {'setup ms':>9} {'finish':>12}"
    )
    for name, request in CASES.items():
        started = time.perf_counter()
        constraint = build_constraint(**request) if request else None
        build_s = time.perf_counter() - started
        generate(engine, constraint, max_tokens=4, seed=0)  # warm
        tokens = 0
        seconds = 0.0
        grammar_s = 0.0
        setup_s: list[float] = []
        finishes: dict[str, int] = {}
        for run in range(args.runs):
            timers: list[TimedProcessor] = []
            started = time.perf_counter()
            choices = generate(
                engine, constraint, max_tokens=args.max_tokens, seed=run, timer=timers
            )
            seconds += time.perf_counter() - started
            tokens += sum(len(c.token_ids) + (c.finish_reason == "stop") for c in choices)
            for c in choices:
                finishes[c.finish_reason] = finishes.get(c.finish_reason, 0) + 1
            for t in timers:
                grammar_s += t.seconds
            # the processor's own construction (grammar compile, closing reserve)
            if constraint is not None:
                started = time.perf_counter()
                GrammarLogitsProcessor(
                    [constraint], engine.vocabulary(), prompt_len=1, max_new_tokens=args.max_tokens
                )
                setup_s.append(time.perf_counter() - started)
        per_token_ms = seconds / tokens * 1000
        grammar_us = grammar_s / tokens * 1e6
        share = grammar_s / seconds * 100
        setup_ms = (statistics.median(setup_s) + build_s) * 1000 if setup_s else 0.0
        print(
            f"{name:<14} {tokens:>7} {tokens / seconds:>8.1f} {per_token_ms:>9.2f} "
            f"{grammar_us:>17.0f} {share:>5.1f}% {setup_ms:>9.1f} {str(finishes):>12}"
        )
        cases.append(
            {
                "case": name,
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "ms_per_token": round(per_token_ms, 2),
                "grammar_us_per_token": round(grammar_us),
                "grammar_share_pct": round(share, 1),
                "setup_ms": round(setup_ms, 1),
                "finishes": finishes,
            }
        )
    if not args.no_save:
        from bench.common import write_result

        command = f"python -m bench.constrained --runs {args.runs} --max-tokens {args.max_tokens}"
        path = write_result("constrained", command, {"cases": cases})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
