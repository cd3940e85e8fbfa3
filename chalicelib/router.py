"""Choose where a request runs: plain functions over plain values (no I/O).

Every poller reads the same live status per deployment (``chalicelib/stores/endpoints.py``: the
``endpoints`` table) and decides here. Among the endpoints that serve the model through the
function, the order of preference is:

1. usable: online (heard from within ``stale_s``) and its circuit not open;
2. hot for this model before starting, before cold;
3. spare capacity before full (in-flight counted across every poller);
4. lower load (in-flight / capacity), then higher priority, then name (stable).

A circuit opens after ``failures_to_open`` consecutive infrastructure failures (a task lost with
its worker, an endpoint that cannot be reached), half-opens after ``cooldown_s`` to let exactly
one probe through (the store's conditional write decides who takes it), and closes on the
first success. A request's own error (the engine refusing it) never counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chalicelib.errors import ModelNotFoundError
from chalicelib.registry import Endpoint, ModelDeployment

HOT, STARTING, COLD, UNAVAILABLE = "hot", "starting", "cold", "unavailable"
_WARMTH = {HOT: 0, STARTING: 1, COLD: 2, UNAVAILABLE: 3}

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

Candidate = tuple[Endpoint, ModelDeployment]


@dataclass(frozen=True)
class CircuitPolicy:
    failures_to_open: int = 3
    cooldown_s: float = 30.0
    # An endpoint not heard from for this long is offline (heartbeats come every few seconds).
    stale_s: float = 30.0


@dataclass(frozen=True)
class EndpointStatus:
    """One endpoint's live status as every poller sees it (an item of the endpoints table)."""

    name: str
    inflight: int = 0
    failures: int = 0
    opened_at: float = 0.0
    probe_at: float = 0.0
    last_seen: float = 0.0
    # model → hot | starting | cold | unavailable, as the endpoint last reported.
    models: Mapping[str, str] = field(default_factory=dict)


def circuit(status: EndpointStatus, now: float, policy: CircuitPolicy) -> str:
    if status.failures < policy.failures_to_open:
        return CLOSED
    if now - status.opened_at < policy.cooldown_s:
        return OPEN
    # Cooled down: one probe may go; once it is out, the circuit stays shut until it reports.
    return HALF_OPEN if status.probe_at < status.opened_at + policy.cooldown_s else OPEN


def online(status: EndpointStatus | None, now: float, policy: CircuitPolicy) -> bool:
    return status is not None and now - status.last_seen <= policy.stale_s


def model_status(
    endpoint: Endpoint,
    model: str,
    status: EndpointStatus | None,
    now: float,
    policy: CircuitPolicy,
) -> str:
    """hot | starting | cold | unavailable for one deployment of ``model``."""
    if not online(status, now, policy):
        return UNAVAILABLE
    assert status is not None
    if circuit(status, now, policy) == OPEN:
        return UNAVAILABLE
    return status.models.get(model, COLD)


def overall_status(per_deployment: list[str]) -> str:
    """A model's status: that of its warmest deployment."""
    if not per_deployment:
        return UNAVAILABLE
    return min(per_deployment, key=lambda s: _WARMTH.get(s, 3))


def rank(
    candidates: list[Candidate],
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: CircuitPolicy | None = None,
) -> list[Candidate]:
    """The usable candidates, best first (see the module docstring); raise if none serve it."""
    if not candidates:
        raise ModelNotFoundError("No deployment serves this model.")
    policy = policy or CircuitPolicy()
    usable = []
    for endpoint, deployment in candidates:
        status = statuses.get(endpoint.name)
        if not online(status, now, policy):
            continue
        assert status is not None
        if circuit(status, now, policy) == OPEN:
            continue
        usable.append((endpoint, deployment, status))

    def key(
        c: tuple[Endpoint, ModelDeployment, EndpointStatus],
    ) -> tuple[int, int, float, int, str]:
        endpoint, deployment, status = c
        warmth = _WARMTH.get(status.models.get(deployment.model, COLD), 2)
        full = int(status.inflight >= endpoint.max_inflight)
        load = status.inflight / max(1, endpoint.max_inflight)
        return (warmth, full, load, -endpoint.priority, endpoint.name)

    return [(e, d) for e, d, _ in sorted(usable, key=key)]


def choose(
    candidates: list[Candidate],
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: CircuitPolicy | None = None,
) -> Candidate | None:
    """The best usable candidate, or None when every one is offline or its circuit open."""
    ranked = rank(candidates, statuses, now, policy)
    return ranked[0] if ranked else None
