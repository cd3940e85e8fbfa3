"""Choose where a request runs: plain function over plain values (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib.errors import ModelNotFoundError, UpstreamUnavailableError
from chalicelib.registry import Endpoint, ModelDeployment


def choose(
    candidates: list[tuple[Endpoint, ModelDeployment]],
    inflight: Mapping[str, int],
    open_circuits: frozenset[str] = frozenset(),
) -> tuple[Endpoint, ModelDeployment]:
    """The least-loaded endpoint (by in-flight / capacity) whose circuit is closed."""
    if not candidates:
        raise ModelNotFoundError("No deployment serves this model.")
    usable = [c for c in candidates if c[0].name not in open_circuits]
    if not usable:
        raise UpstreamUnavailableError("Every endpoint serving this model is failing.")

    def load(c: tuple[Endpoint, ModelDeployment]) -> float:
        return inflight.get(c[0].name, 0) / max(1, c[0].max_inflight)

    return min(usable, key=load)
