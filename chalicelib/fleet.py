"""What users and operators see of the deployments: pure views over the shared status.

``GET /v1/models`` items gain ``status`` (the model's warmest deployment: hot | starting | cold |
unavailable); the operator route ``GET /v1/endpoints`` lists every endpoint with its status,
circuit, in-flight and capacity, plus the interactive queue's depth.

``POST /v1/models/{model}/warm`` (``Fleet.warm``): the router's choice among the model's
deployments is warmed unless one is hot already. The API marks it warming on the endpoint's
item (so every reader sees ``starting`` at once) and queues ``{"warm": {model, endpoint}}`` for
a poller, which sends the endpoint ``hpc_functions.warm``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib import router
from chalicelib.auth import Principal
from chalicelib.errors import ModelNotFoundError, PermissionDeniedError, UpstreamUnavailableError
from chalicelib.registry import Endpoint, ModelDeployment, Registry
from chalicelib.router import CircuitPolicy, EndpointStatus
from chalicelib.stores.endpoints import EndpointStore


def model_status(
    registry: Registry,
    model: str,
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: CircuitPolicy,
) -> str:
    per_deployment = [
        router.model_status(e, model, statuses.get(e.name), now, policy)
        for e in registry.endpoints
        if any(m.model == model for m in e.models)
    ]
    return router.overall_status(per_deployment)


def deployments(registry: Registry, model: str) -> list[tuple[Endpoint, ModelDeployment]]:
    """Every (endpoint, deployment) of ``model``, whichever functions it serves."""
    return [(e, m) for e in registry.endpoints for m in e.models if m.model == model]


@dataclass(frozen=True)
class Warming:
    """The answer to a warm-up: what the model is now, and whether this call started one."""

    model: str
    status: str
    started: bool
    deployments: list[dict[str, str]]

    def body(self) -> dict[str, Any]:
        return {
            "object": "model.warm",
            "model": self.model,
            "status": self.status,
            "deployments": self.deployments,
        }


def endpoints_view(
    registry: Registry,
    statuses: Mapping[str, EndpointStatus],
    now: float,
    policy: CircuitPolicy,
    queue_depth: int | None,
) -> dict[str, Any]:
    data = []
    for e in registry.endpoints:
        status = statuses.get(e.name)
        online = router.online(status, now, policy)
        data.append(
            {
                "name": e.name,
                "object": "endpoint",
                "status": "online" if online else "offline",
                "circuit": router.circuit(status, now, policy) if status else router.CLOSED,
                "inflight": status.inflight if status else 0,
                "capacity": e.max_inflight,
                "consecutive_failures": status.failures if status else 0,
                "last_seen": round(status.last_seen, 3) if status and status.last_seen else None,
                "models": {
                    m.model: router.model_status(e, m.model, status, now, policy) for m in e.models
                },
            }
        )
    return {"object": "list", "data": data, "queue_depth": queue_depth}


def require_operator(principal: Principal, operator_groups: list[str]) -> None:
    if not operator_groups or not principal.groups & set(operator_groups):
        raise PermissionDeniedError(
            "This route is for operators (a member of FIRST_OPERATOR_GROUPS).", code="forbidden"
        )


class Fleet:
    """The shared endpoint status as the API reads it: one Scan per ``cache_s`` at most."""

    def __init__(
        self,
        registry: Registry,
        store: EndpointStore,
        policy: CircuitPolicy,
        *,
        queue_depth: Callable[[], int] | None = None,
        cache_s: float = 1.0,
    ) -> None:
        self._registry = registry
        self._store = store
        self._policy = policy
        self._queue_depth = queue_depth
        self._cache_s = cache_s
        self._cached: tuple[float, dict[str, EndpointStatus]] | None = None
        # One reader refreshes; concurrent requests meanwhile use the view it replaces (every
        # waiting request scanning at once cost 5 Scans/s at 32 concurrent requests, not 1).
        self._refreshing = threading.Lock()

    def statuses(self) -> dict[str, EndpointStatus]:
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] <= self._cache_s:
            return cached[1]
        # Without a view yet (or a warm-up just cleared it), wait for the reader that makes one.
        if not self._refreshing.acquire(blocking=cached is None):
            assert cached is not None  # only a reader with a view to give does not wait
            return cached[1]
        try:
            if self._cached is not cached and self._cached is not None:
                return self._cached[1]  # refreshed while this one waited
            statuses = self._store.statuses()
            self._cached = (time.monotonic(), statuses)
            return statuses
        finally:
            self._refreshing.release()

    def annotate(self, model: dict[str, Any]) -> dict[str, Any]:
        """A model object with its ``status`` (hot | starting | cold | unavailable)."""
        status = model_status(
            self._registry, model["id"], self.statuses(), time.time(), self._policy
        )
        return {**model, "status": status}

    def start_wait_s(self, model: str, function: str) -> float | None:
        """Seconds a request for ``model`` is expected to wait for a deployment to turn hot
        (None: one is hot, or none is usable)."""
        candidates = self._registry.candidates(model, function)
        return router.start_wait_s(candidates, self.statuses(), time.time(), self._policy)

    def warm(self, model: str, send: Callable[[dict[str, Any]], Any]) -> Warming:
        """Warm the router's choice of ``model``'s deployments unless one is hot already."""
        now = time.time()
        statuses = self.statuses()
        candidates = deployments(self._registry, model)
        try:
            ranked = router.rank(candidates, statuses, now, self._policy)
        except router.NoDeploymentError as exc:
            raise ModelNotFoundError(f"No deployment serves '{model}'.", param="model") from exc
        if not ranked:
            raise UpstreamUnavailableError(
                f"No deployment of '{model}' can be warmed now (offline or failing); try later.",
                code="unavailable",
            )
        endpoint, deployment = ranked[0]
        state = router.model_status(endpoint, model, statuses.get(endpoint.name), now, self._policy)
        started = state == router.COLD
        if started:
            self._store.mark_warming(endpoint.name, model, now)
            send({"warm": {"model": model, "endpoint": endpoint.name}})
            self._cached = None  # the next read sees the mark
            state = router.STARTING
        view = [
            {
                "endpoint": e.name,
                "status": state
                if e.name == endpoint.name
                else router.model_status(e, model, statuses.get(e.name), now, self._policy),
            }
            for e, _ in candidates
        ]
        return Warming(model, state, started, view)

    def endpoints(self) -> dict[str, Any]:
        depth = self._queue_depth() if self._queue_depth is not None else None
        return endpoints_view(self._registry, self.statuses(), time.time(), self._policy, depth)
