"""Engines kept warm in the worker process: each built once per distinct config and reused.

A Globus Compute worker runs many tasks in one process; loading a model per task would cost
seconds to minutes. Engine modules are imported only when their kind is first asked for: a vLLM
node never imports torch here, and the transformers engine never needs the vLLM adapter.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from hpc_functions.engines.base import Engine, EngineUnavailableError

_engines: dict[str, Engine] = {}
_served_names: dict[str, str] = {}
_load_locks: dict[str, threading.Lock] = {}
# Guards the three dicts above; held only briefly, never while a model loads.
_registry_lock = threading.Lock()


def _build(config: dict[str, Any]) -> Engine:
    kind = config.get("kind", "transformers")
    if kind == "transformers" and config.get("vision"):
        from hpc_functions.engines.transformers_vision import TransformersVisionEngine

        return TransformersVisionEngine(config)
    if kind == "transformers":
        from hpc_functions.engines.transformers_engine import TransformersEngine

        return TransformersEngine(config)
    if kind == "vllm":
        from hpc_functions.engines.vllm import VllmEngine

        return VllmEngine(config)
    raise EngineUnavailableError(f"unknown engine kind {kind!r}", param="engine")


def get_engine(config: dict[str, Any]) -> Engine:
    """The engine for ``config``, built on first use and cached for the life of the process.

    Two threads asking for the same config wait on one load (a model loaded twice could
    exhaust GPU memory); different configs load concurrently. A failed load is not cached, so a
    later task retries it.
    """
    key = json.dumps(config, sort_keys=True)
    with _registry_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:
        with _registry_lock:
            engine = _engines.get(key)
        if engine is not None:
            return engine
        engine = _build(config)
        with _registry_lock:
            _engines[key] = engine
            _served_names[key] = str(config.get("model", ""))
        return engine


def warm_engines() -> list[str]:
    """Served model names of the engines loaded in this process, in load order."""
    with _registry_lock:
        return list(dict.fromkeys(_served_names.values()))
