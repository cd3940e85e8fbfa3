"""Throughput mode on the transformers engine: lines with the same sampling parameters share
``generate`` calls of up to ``max_rows`` rows, and greedy lines come out as they do one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_functions.engines import get_engine
from hpc_functions.engines.base import EngineError
from hpc_functions.engines.throughput import run_many
from hpc_functions.engines.transformers_engine import TransformersEngine

PROMPTS = (
    "Hi",
    "Tell me something about the sea.",
    "xyz qrs 123",
    "The capital of France is",
    "apple banana cherry",
)


def bodies(n: int) -> list[dict[str, Any]]:
    # Prompts of different lengths (the batched rows are left-padded to one width); completions,
    # whose greedy answers differ per prompt on the tiny model (its chat answers do not).
    return [
        {
            "model": "tiny-llama",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": 6,
            "temperature": 0,
        }
        for i in range(n)
    ]


def counted(engine: TransformersEngine) -> list[int]:
    """Rows of each ``model.generate`` call from now on (the model's own method, wrapped)."""
    rows: list[int] = []
    generate = engine.model.generate

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rows.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)

    engine.model.generate = wrapper
    return rows


def test_lines_share_generate_calls_of_up_to_max_rows_and_match_single_runs(
    tiny_model_dir: Path,
) -> None:
    engine = get_engine(
        {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)}
    )
    assert isinstance(engine, TransformersEngine)
    lines = bodies(5)
    single = [engine.completions(b) for b in lines]
    # Five different answers: equal lists below mean each row kept its own prompt.
    assert len({s["choices"][0]["text"] for s in single}) == 5
    rows = counted(engine)
    try:
        together = run_many(engine, "completions", lines, max_rows=8)
        assert rows == [5]  # five lines, one forward pass per token for all of them
        rows.clear()
        chunked = run_many(engine, "completions", lines, max_rows=2)
        assert sorted(rows) == [1, 2, 2]
    finally:
        del engine.model.generate  # the model's own method again
    for outcomes in (together, chunked):
        assert not any(isinstance(o, EngineError) for o in outcomes)
        texts = [o["choices"][0]["text"] for o in outcomes]  # type: ignore[index]
        assert texts == [s["choices"][0]["text"] for s in single]
        usage = [o["usage"] for o in outcomes]  # type: ignore[index]
        assert usage == [s["usage"] for s in single]


def test_a_line_the_engine_refuses_gets_its_error_and_the_others_run(
    tiny_model_dir: Path,
) -> None:
    engine = get_engine(
        {"kind": "transformers", "model": "tiny-llama", "path": str(tiny_model_dir)}
    )
    lines = bodies(3)
    lines[1] = {**lines[1], "echo": True}
    outcomes = run_many(engine, "completions", lines)
    assert isinstance(outcomes[1], EngineError) and outcomes[1].param == "echo"
    assert all(isinstance(o, dict) for o in (outcomes[0], outcomes[2]))
