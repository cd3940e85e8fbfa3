"""Choose where a request runs: plain functions over plain values (no I/O).

Every poller reads the same live status per deployment (``chalicelib/stores/endpoints.py``: the
``endpoints`` table) and decides here. Among the endpoints that serve the model through the
function, the order of preference is:

1. usable: online (heard from within ``stale_s``) and its circuit not open;
2. hot for this model before starting, before cold;
3. spare capacity before full (in-flight: the slots pollers lease, counted across every poller);
4. lower load (in-flight / capacity), then higher priority, then name (stable).

A request with an affinity key (``chalicelib/affinity.py``: one per conversation) goes first to
its key's *home*, where its prefix is likely cached (``prefer_home``), unless the home is not
usable (offline, circuit open), not as warm as the best, or loaded past the bound: consistent
hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018). The home is where the key
last moved to (``EndpointStatus.homes``, read with the statuses every poller already reads),
else the key's first choice by rendezvous hashing over the model's endpoints, weighted by their
capacity: a pure function, so every poller agrees with no shared write, each endpoint is home
to its share of the conversations, and an endpoint joining takes only its share (1/N of equal
ones), all from the others and none moved between them. A key whose home is refused goes to its next rendezvous choice within the
bound (every poller picks the same one), else to the usual best; the poller then records the
move once, so the conversation stays there.

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

import hashlib
import math
from collections.abc import Mapping, Sequence
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
    # affinity key → when a conversation moved here (epoch s): its home since (``home_of``).
    homes: Mapping[str, float] = field(default_factory=dict)


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


# --- affinity ------------------------------------------------------------------------------

HIT, MISS = "hit", "miss"


@dataclass(frozen=True)
class AffinityPolicy:
    # A home may hold at most ceil(bound × (all in flight + 1) × its share of the capacity)
    # requests with this one: 1.25 keeps every endpoint within 25 % of its fair share (the
    # paper's ε = 0.25) while a conversation moves only when its home is well above the rest.
    bound: float = 1.25
    # Requests a home may hold above the bound: at low load the bound alone would refuse a
    # small endpoint its second conversation (2 slots of 6: ceil(1.25 × 2 / 3) = 1), moving
    # conversations for a balance nobody needs yet. Measured: bench/affinity.py.
    slack: int = 1
    # A recorded move is the key's home for this long (a conversation idle longer goes back to
    # its rendezvous home: prefix caches do not keep its blocks that long under load anyway).
    ttl_s: float = 3600.0


def _score(key: str, name: str, weight: float) -> float:
    """Weighted rendezvous (Schindelhauer & Schomaker): ``weight / -ln(u)`` with ``u`` the
    key's uniform hash for ``name``, so an endpoint is first for its share of the keys."""
    digest = hashlib.blake2b(f"{key}|{name}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64
    return weight / -math.log(u)


def rendezvous(
    key: str, names: Sequence[str], weights: Mapping[str, float] | None = None
) -> list[str]:
    """``names`` in ``key``'s order of preference (highest random weight first); each is first
    for a share of the keys in proportion to its weight (1 when not given)."""
    w = weights or {}
    return sorted(names, key=lambda n: (_score(key, n, w.get(n, 1.0)), n), reverse=True)


def _capacities(candidates: list[Candidate]) -> dict[str, float]:
    return {e.name: float(max(1, e.max_inflight)) for e, _ in candidates}


def home_of(
    key: str,
    candidates: list[Candidate],
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: AffinityPolicy | None = None,
) -> str | None:
    """Where ``key``'s conversation lives: the candidate it last moved to (within the TTL),
    else its rendezvous first choice among the candidates (None when there are none)."""
    policy = policy or AffinityPolicy()
    names = [e.name for e, _ in candidates]
    moved = [
        (at, name)
        for name in names
        if (s := statuses.get(name)) is not None
        and (at := s.homes.get(key)) is not None
        and now - at < policy.ttl_s
    ]
    if moved:
        return max(moved)[1]
    order = rendezvous(key, names, _capacities(candidates))
    return order[0] if order else None


def within_bound(
    name: str,
    ranked: list[Candidate],
    statuses: Mapping[str, EndpointStatus],
    policy: AffinityPolicy,
) -> bool:
    """Whether endpoint ``name`` may take one more request: its in-flight count (this one
    included) at most ``bound`` times its capacity-weighted share of all in flight plus one,
    plus ``slack``, and never past its capacity."""
    capacity = {e.name: max(1, e.max_inflight) for e, _ in ranked}
    if name not in capacity:
        return False
    inflight = {n: (s.inflight if (s := statuses.get(n)) else 0) for n in capacity}
    share = capacity[name] / sum(capacity.values())
    allowed = math.ceil(policy.bound * (sum(inflight.values()) + 1) * share) + policy.slack
    return inflight[name] + 1 <= min(allowed, capacity[name])


def prefer_home(
    ranked: list[Candidate],
    key: str,
    home: str | None,
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: AffinityPolicy | None = None,
    circuit_policy: CircuitPolicy | None = None,
) -> tuple[list[Candidate], str]:
    """``ranked`` (``rank``'s answer) with the key's endpoint first, and ``hit`` when that is
    its home, ``miss`` when the home was refused (down, circuit open, colder than the best, or
    over the load bound) and the key goes to its next rendezvous choice within the bound, else
    to the usual best. The rest keep their order (where the poller goes when one is full)."""
    if not ranked:
        return ranked, MISS
    policy = policy or AffinityPolicy()
    circuit_policy = circuit_policy or CircuitPolicy()

    def warmth(c: Candidate) -> int:
        status = statuses.get(c[0].name)
        state = reported(status, c[1].model, now, circuit_policy) if status else COLD
        return _WARMTH.get(state, 2)

    best = warmth(ranked[0])
    by_name = {c[0].name: c for c in ranked}
    eligible = [
        n
        for n in rendezvous(key, list(by_name), _capacities(ranked))
        if warmth(by_name[n]) == best and within_bound(n, ranked, statuses, policy)
    ]
    if home is not None and home in eligible:
        chosen, verdict = home, HIT
    else:
        chosen, verdict = (eligible[0] if eligible else ranked[0][0].name), MISS
    first = by_name[chosen]
    return [first, *(c for c in ranked if c is not first)], verdict
