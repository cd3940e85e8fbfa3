"""Throughput mode: many requests through one engine at once (a batch shard).

``run_many(engine, kind, bodies)`` answers each body with its OpenAI response dict or the
``EngineError`` that refused it, in order:

- the transformers engine generates many lines per forward pass (``transformers_batch``: lines
  with the same sampling parameters share one left-padded ``generate`` call);
- any other engine (vLLM) gets the lines as concurrent requests: ``vllm serve`` schedules them
  with continuous batching on the GPU, which is what ``vllm run-batch`` does offline, without
  loading the model a second time next to the server that already holds it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hpc_functions.engines.base import Engine, EngineError

Outcome = dict[str, Any] | EngineError
# Requests one shard keeps in flight against a served engine (vLLM batches them itself).
DEFAULT_CONCURRENCY = 64


def run_many(
    engine: Engine,
    kind: str,
    bodies: list[dict[str, Any]],
    *,
    max_rows: int = 32,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[Outcome]:
    if type(engine).__module__.endswith("transformers_engine") and kind != "embeddings":
        from hpc_functions.engines.transformers_batch import generate_many
        from hpc_functions.engines.transformers_engine import TransformersEngine

        assert isinstance(engine, TransformersEngine)  # the module check spares vLLM a torch import
        return generate_many(engine, kind, bodies, max_rows=max_rows)
    method = getattr(engine, kind)

    def one(body: dict[str, Any]) -> Outcome:
        try:
            return dict(method(body))
        except EngineError as exc:
            return exc

    if concurrency <= 1 or len(bodies) <= 1:
        return [one(b) for b in bodies]
    with ThreadPoolExecutor(min(concurrency, len(bodies)), thread_name_prefix="batch") as pool:
        return list(pool.map(one, bodies))
