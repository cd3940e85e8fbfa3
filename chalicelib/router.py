"""Choose where a request runs: plain function over plain values (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

from chalicelib.errors import ModelNotFoundError
from chalicelib.registry import Endpoint, ModelDeployment


def choose(
    candidates: list[tuple[Endpoint, ModelDeployment]],
    inflight: Mapping[str, int],
) -> tuple[Endpoint, ModelDeployment]:
    """The least-loaded endpoint, by this process's in-flight count over its capacity.

    Health (circuits) and load shared across pollers come with federation, from the
    ``endpoints`` table; until then nothing here pretends to know them.
    """
    if not candidates:
        raise ModelNotFoundError("No deployment serves this model.")

    def load(c: tuple[Endpoint, ModelDeployment]) -> float:
        return inflight.get(c[0].name, 0) / max(1, c[0].max_inflight)

    return min(candidates, key=load)
