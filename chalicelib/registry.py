"""The deployment registry: which Globus Compute endpoints serve which models, per stage.

One JSON file per stage under ``infra/deployments/`` (``local.json`` is the offline stack).
``${VAR}`` in engine configs expands from the environment when loaded (``FIRST_HOME`` defaults to
the settings' home), so the same file works on any checkout.

What a model can do (``capabilities``, listed by ``GET /v1/models``) follows from its entries: the
routes its deployments serve, and from each engine config::

    transformers  chat models: tools and structured outputs (constrained decoding); no reasoning
    vllm          structured outputs on chat (vLLM's guided decoding); tools only where the
                  engine names its "tool_call_parser", reasoning only where it names its
                  "reasoning_parser" (the launcher starts `vllm serve` with the same parsers)
    either        vision (images in chat messages) only where the engine config says
                  "vision": true (a vision-language model)

A model served by several deployments can do only what every one of its chat deployments can:
the router may send a request to any of them.

Beside models, the registry declares HPC functions that run as jobs (``POST /v1/jobs``,
``chalicelib/jobs.py``): a top-level ``"functions"`` list, each with the name clients call, the
Globus Compute function (a key of each endpoint's ``"functions"``), the endpoints that have it,
who may call it (``access``, as for models), bounds on its input and output, and the JSON Schema
of its ``input``. The poller routes a job as it routes a model's request: the function reads as a
deployment of its name through its Globus Compute function (``HpcFunction.deployment``).
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.access import AccessRule

# A model entry without "max_tokens" caps a request's max_tokens / max_completion_tokens here:
# every completion token is engine time, and a runaway request holds a worker until it is done.
DEFAULT_MAX_TOKENS = 16384

# The routes a deployment serves, by the name clients know (function names are internal).
# Responses and Messages are not served yet: listing them would be a promise the API breaks.
ROUTES = {"chat_completions": "chat", "completions": "completions", "embeddings": "embeddings"}
CAPABILITIES = ("tools", "structured_outputs", "reasoning", "vision")
# The engine kind of an HPC function's deployment: nothing to load, so nothing to warm.
FUNCTION_KIND = "function"
# A function entry without bounds: its input JSON (files not counted) and its result's JSON.
DEFAULT_MAX_INPUT_BYTES = 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_FILES = 4


@dataclass(frozen=True)
class ModelDeployment:
    model: str
    owned_by: str
    endpoints: tuple[str, ...]
    engine: dict[str, Any]
    # Who may use the model (chalicelib/access.py); None: everyone.
    access: AccessRule | None = None
    # The most completion tokens one request may ask for (chalicelib/ceilings.py).
    max_tokens: int = DEFAULT_MAX_TOKENS
    # The model's context window in tokens (vLLM's max_model_len, the tokenizer's
    # model_max_length for the transformers engine); None when the entry does not say.
    context_length: int | None = None

    def supports(self, capability: str) -> bool:
        """Whether this deployment can do ``capability`` (one of ``CAPABILITIES``)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r} (one of {CAPABILITIES})")
        kind = self.engine.get("kind")
        if "chat_completions" not in self.endpoints or kind not in ("transformers", "vllm"):
            return False
        if capability == "structured_outputs":
            return True
        if capability == "vision":
            # Only the entry knows whether the model takes images (both engines pass them).
            return bool(self.engine.get("vision"))
        if capability == "tools":
            return kind == "transformers" or bool(self.engine.get("tool_call_parser"))
        return kind == "vllm" and bool(self.engine.get("reasoning_parser"))


@dataclass(frozen=True)
class Endpoint:
    name: str
    endpoint_id: str
    executor: str
    max_inflight: int
    # Function name → Globus Compute function ID; a null (unregistered) ID is dropped at load.
    functions: dict[str, str]
    models: tuple[ModelDeployment, ...] = field(default_factory=tuple)
    # Ties in load go to the higher priority (e.g. the cluster with the faster GPUs).
    priority: int = 0
    # The offline stack's local endpoints only: where the endpoint listens.
    url: str | None = None


@dataclass(frozen=True)
class HpcFunction:
    """An HPC function callable as a job (``POST /v1/jobs``)."""

    name: str
    # The Globus Compute function: its key in each endpoint's ``functions``.
    function: str
    endpoints: tuple[str, ...]
    input_schema: dict[str, Any]
    description: str = ""
    access: AccessRule | None = None
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_files: int = DEFAULT_MAX_FILES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HpcFunction:
        return cls(
            name=str(data["name"]),
            function=str(data["function"]),
            endpoints=tuple(str(e) for e in data.get("endpoints", [])),
            input_schema=dict(data.get("input_schema") or {"type": "object"}),
            description=str(data.get("description", "")),
            access=AccessRule.from_dict(data.get("access")),
            max_input_bytes=int(data.get("max_input_bytes", DEFAULT_MAX_INPUT_BYTES)),
            max_output_bytes=int(data.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)),
            max_files=int(data.get("max_files", DEFAULT_MAX_FILES)),
        )

    def deployment(self) -> ModelDeployment:
        """The function as the router and the poller see a model's deployment: its name through
        its Globus Compute function; the task's ``engine`` names the function and its bounds."""
        return ModelDeployment(
            model=self.name,
            owned_by="first",
            endpoints=(self.function,),
            engine={
                "kind": FUNCTION_KIND,
                "function": self.name,
                "max_output_bytes": self.max_output_bytes,
            },
            access=self.access,
        )


@dataclass(frozen=True)
class Registry:
    stage: str
    endpoints: tuple[Endpoint, ...]
    functions: tuple[HpcFunction, ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, path: Path, env: dict[str, str] | None = None) -> Registry:
        return cls.from_text(Path(path).read_text(), env)

    @classmethod
    def from_text(cls, raw: str, env: dict[str, str] | None = None) -> Registry:
        data = json.loads(string.Template(raw).safe_substitute(env or os.environ))
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Registry:
        endpoints = tuple(
            Endpoint(
                name=e["name"],
                endpoint_id=e["endpoint_id"],
                executor=e.get("executor", "globus"),
                max_inflight=int(e.get("max_inflight", 16)),
                priority=int(e.get("priority", 0)),
                url=e.get("url"),
                functions={k: v for k, v in e.get("functions", {}).items() if v},
                models=tuple(
                    ModelDeployment(
                        model=m["model"],
                        owned_by=m.get("owned_by", "first"),
                        endpoints=tuple(m.get("endpoints", [])),
                        engine=dict(m["engine"]),
                        access=AccessRule.from_dict(m.get("access")),
                        max_tokens=int(m.get("max_tokens", DEFAULT_MAX_TOKENS)),
                        context_length=_optional_int(m.get("context_length")),
                    )
                    for m in e.get("models", [])
                ),
            )
            for e in data.get("endpoints", [])
        )
        functions = tuple(HpcFunction.from_dict(f) for f in data.get("functions", []))
        registry = cls(stage=data.get("stage", ""), endpoints=endpoints, functions=functions)
        for model_id in registry.model_ids():
            rules = {m.access for e in endpoints for m in e.models if m.model == model_id}
            if len(rules) > 1:
                raise ValueError(f"model {model_id!r} has different access rules per endpoint")
        registry._check_functions()
        return registry

    def _check_functions(self) -> None:
        names = {e.name for e in self.endpoints}
        seen: set[str] = set()
        for f in self.functions:
            if f.name in seen or f.name in self.model_ids():
                raise ValueError(f"function {f.name!r} is declared twice (or is a model's name)")
            seen.add(f.name)
            unknown = set(f.endpoints) - names
            if unknown:
                raise ValueError(f"function {f.name!r} names unknown endpoints {sorted(unknown)}")

    def function(self, name: str) -> HpcFunction | None:
        """The HPC function called ``name`` (a job's ``function``), or None."""
        return next((f for f in self.functions if f.name == name), None)

    def model_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.endpoints:
            for m in e.models:
                seen.setdefault(m.model, None)
        return list(seen)

    def model(self, model_id: str) -> ModelDeployment | None:
        for e in self.endpoints:
            for m in e.models:
                if m.model == model_id:
                    return m
        return None

    def deployments(self, model_id: str) -> list[ModelDeployment]:
        """Every deployment of ``model_id``, one per endpoint that serves it."""
        return [m for e in self.endpoints for m in e.models if m.model == model_id]

    def supports(self, model_id: str, capability: str) -> bool:
        """Whether every chat deployment of ``model_id`` can do ``capability`` (False if none):
        the router may send a chat request to any of them."""
        chat = [m for m in self.deployments(model_id) if "chat_completions" in m.endpoints]
        return bool(chat) and all(m.supports(capability) for m in chat)

    def capabilities(self, model_id: str) -> dict[str, Any]:
        """What ``model_id`` can do, as ``GET /v1/models`` lists it."""
        found = self.deployments(model_id)
        served = {f for m in found for f in m.endpoints}
        lengths = [m.context_length for m in found if m.context_length is not None]
        return {
            "routes": [route for function, route in ROUTES.items() if function in served],
            **{c: self.supports(model_id, c) for c in CAPABILITIES},
            # The smallest window of any deployment: the one a request may land on.
            "context_length": min(lengths) if lengths else None,
        }

    def access(self, model_id: str) -> AccessRule | None:
        deployment = self.model(model_id)
        return deployment.access if deployment else None

    def candidates(self, model_id: str, function: str) -> list[tuple[Endpoint, ModelDeployment]]:
        """Every (endpoint, deployment) that serves ``model_id`` through ``function``; an HPC
        function's job (``model_id`` its name) through its Globus Compute function."""
        found = [
            (e, m)
            for e in self.endpoints
            for m in e.models
            if m.model == model_id and function in m.endpoints and e.functions.get(function)
        ]
        for f in self.functions:
            if f.name == model_id and f.function == function:
                found += [
                    (e, f.deployment())
                    for e in self.endpoints
                    if e.name in f.endpoints and e.functions.get(function)
                ]
        return found


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
