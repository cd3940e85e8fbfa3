"""Choose where a request runs: plain functions over plain values (no I/O).

Every poller reads the same live status per deployment (``chalicelib/stores/endpoints.py``: the
``endpoints`` table) and decides here. Among the endpoints that serve the model through the
function, the order of preference is:

1. usable: online (heard from within ``stale_s``) and its circuit not open;
2. hot for this model before starting, before cold;
3. spare capacity before full (in-flight: the slots pollers lease, counted across every poller);
4. lower load (in-flight / capacity), then higher priority, then name (stable).

A circuit opens after ``failures_to_open`` consecutive infrastructure failures (a task lost with
its worker, an endpoint that cannot be reached), half-opens after ``cooldown_s`` to let exactly
one probe through (the store's conditional write decides who takes it), and closes on the
first success. A request's own error (the engine refusing it) never counts.

A deployment is ``starting`` when its endpoint says so (offline: the local endpoint's
``/health``), or when it reports ``cold`` but a warm-up was asked for there within
``warm_timeout_s`` (``warming``: the API's ``POST /v1/models/{model}/warm``, a poller warming a
cold model) and the endpoint has not picked it up yet. ``start_wait_s`` is how long a request
for a model with no hot deployment is expected to wait: what the API compares with its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chalicelib.registry import Endpoint, ModelDeployment

HOT, STARTING, COLD, UNAVAILABLE = "hot", "starting", "cold", "unavailable"
_WARMTH = {HOT: 0, STARTING: 1, COLD: 2, UNAVAILABLE: 3}

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

Candidate = tuple[Endpoint, ModelDeployment]


class NoDeploymentError(LookupError):
    """No deployment serves the model through the function: the router's own error, which its
    callers translate (the API: model not found; the poller: the request cannot run)."""


@dataclass(frozen=True)
class CircuitPolicy:
    failures_to_open: int = 3
    cooldown_s: float = 30.0
    # An endpoint not heard from for this long is offline (heartbeats come every few seconds).
    stale_s: float = 30.0
    # A warm-up asked for this long ago without the model turning hot has failed.
    warm_timeout_s: float = 600.0
    # How long a load is expected to take where the endpoint has not said.
    start_estimate_s: float = 60.0


@dataclass(frozen=True)
class Lease:
    """Slots of an endpoint one poller leases, until when (epoch s) unless it renews."""

    slots: int
    until: float


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
    # model → when a starting model is expected hot (epoch s), where the endpoint said.
    ready_at: Mapping[str, float] = field(default_factory=dict)
    # model → when a warm-up was last asked for on this endpoint (epoch s).
    warming: Mapping[str, float] = field(default_factory=dict)
    # poller → its lease on the endpoint's slots (``inflight`` is their sum), and poller → when
    # it last found the endpoint full (``chalicelib/poller/capacity.py``).
    leases: Mapping[str, Lease] = field(default_factory=dict)
    wants: Mapping[str, float] = field(default_factory=dict)


def circuit(status: EndpointStatus, now: float, policy: CircuitPolicy) -> str:
    if status.failures < policy.failures_to_open:
        return CLOSED
    if now - status.opened_at < policy.cooldown_s:
        return OPEN
    # Cooled down: one probe may go; once it is out, the circuit stays shut until it reports.
    return HALF_OPEN if status.probe_at < status.opened_at + policy.cooldown_s else OPEN


def online(status: EndpointStatus | None, now: float, policy: CircuitPolicy) -> bool:
    return status is not None and now - status.last_seen <= policy.stale_s


def warming(status: EndpointStatus, model: str, now: float, policy: CircuitPolicy) -> bool:
    """A warm-up of ``model`` was asked for there and has not timed out."""
    return now - status.warming.get(model, float("-inf")) < policy.warm_timeout_s


def reported(status: EndpointStatus, model: str, now: float, policy: CircuitPolicy) -> str:
    """The endpoint's own word on ``model``, ``cold`` read as ``starting`` while warming."""
    state = status.models.get(model, COLD)
    if state == COLD and warming(status, model, now, policy):
        return STARTING
    return state


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
    return reported(status, model, now, policy)


def ready_in_s(status: EndpointStatus, model: str, now: float, policy: CircuitPolicy) -> float:
    """Seconds until a starting (or cold, once warmed) deployment is expected hot."""
    at = status.ready_at.get(model)
    if at is None:
        since = status.warming.get(model) if warming(status, model, now, policy) else None
        at = (since if since is not None else now) + policy.start_estimate_s
    return max(0.0, at - now)


def start_wait_s(
    candidates: list[Candidate],
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: CircuitPolicy | None = None,
) -> float | None:
    """How long a request for the model is expected to wait for a deployment to turn hot;
    None when one is hot already, or when none is usable (nothing to wait for)."""
    policy = policy or CircuitPolicy()
    waits = []
    for endpoint, deployment in candidates:
        status = statuses.get(endpoint.name)
        state = model_status(endpoint, deployment.model, status, now, policy)
        if state == HOT:
            return None
        if state in (STARTING, COLD):
            assert status is not None
            waits.append(ready_in_s(status, deployment.model, now, policy))
    return min(waits) if waits else None


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
        raise NoDeploymentError("no deployment serves this model")
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
        warmth = _WARMTH.get(reported(status, deployment.model, now, policy), 2)
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
