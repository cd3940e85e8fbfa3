"""What a poller knows of every endpoint: the shared status, refreshed, and kept alive by probes.

Two background threads per poller:

- ``refresh``: reads the ``endpoints`` table every ``refresh_s`` (one Scan: the table has one
  item per endpoint), so routing costs no AWS call per request;
- ``probe``: every ``probe_s`` (every second while an endpoint is starting a model or down)
  asks each endpoint whether it is up and writes a heartbeat for those that are, with each
  model's state. Offline, a local endpoint's ``/health`` lists its models hot | starting | cold
  and, where it has timed a load before, when a starting one will be ready; it answers 503
  while its workers start (up, its models starting). With Globus Compute,
  ``Client.get_endpoint_status`` (cached for the probe interval); an endpoint whose status
  cannot be read is not declared down (the circuit breaker catches real failures), only one
  that Globus reports offline. Globus does not say what its workers hold, so an online Globus
  endpoint's models are reported hot, except one FIRST asked to warm there (``warming#`` on
  the endpoint's item) which reads as starting until that warm-up task returns.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.registry import Endpoint, Registry
from chalicelib.router import COLD, HOT, STARTING, CircuitPolicy, EndpointStatus, warming
from chalicelib.stores.endpoints import EndpointStore


@dataclass(frozen=True)
class Health:
    """What a probe learnt: up (True), down (False) or could not tell (None); the endpoint's
    own word on its models, where it gives one, and seconds until a starting one is ready."""

    up: bool | None
    models: dict[str, str] | None = None
    ready_in_s: dict[str, float] = field(default_factory=dict)


# A probe answers a Health, or just up/down/unknown for one endpoint.
Probe = Callable[[Endpoint], "Health | bool | None"]


def local_probe(endpoint: Endpoint) -> Health:
    import requests

    if not endpoint.url:
        return Health(None)
    try:
        answer = requests.get(f"{endpoint.url.rstrip('/')}/health", timeout=2)
    except requests.RequestException:
        return Health(False)
    if answer.status_code not in (200, 503):
        return Health(False)
    try:
        body = answer.json()
        models = {str(k): str(v) for k, v in dict(body.get("models") or {}).items()}
        ready = {str(k): float(v) for k, v in dict(body.get("ready_in_s") or {}).items()}
    except (ValueError, TypeError, AttributeError):
        body, models, ready = {}, {}, {}
    if answer.status_code == 503 and body.get("status") != "starting":
        return Health(False)
    return Health(True, models or None, ready)


class GlobusProbe:
    """``globus_compute_sdk.Client.get_endpoint_status``; the client is built on first use."""

    def __init__(self) -> None:
        self._client: Any = None

    def __call__(self, endpoint: Endpoint) -> bool | None:
        if self._client is None:
            from globus_compute_sdk import Client

            self._client = Client()
        status = self._client.get_endpoint_status(endpoint.endpoint_id)
        return str(status.get("status", "")).lower() == "online"


class StatusBoard:
    def __init__(
        self,
        registry: Registry,
        store: EndpointStore,
        logger: Logger,
        *,
        refresh_s: float = 1.0,
        probe_s: float = 5.0,
        probes: dict[str, Probe] | None = None,
        policy: CircuitPolicy | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._log = logger
        self._refresh_s = refresh_s
        self._probe_s = probe_s
        self._probes: dict[str, Probe] = probes or {"local": local_probe, "globus": GlobusProbe()}
        self._policy = policy or CircuitPolicy()
        # Set by a probe that found an endpoint down or a model starting: probe again soon.
        self._unsettled = False
        self._statuses: dict[str, EndpointStatus] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._threads = [
            threading.Thread(target=self._probe_loop, daemon=True),
            threading.Thread(target=self._loop, args=(self.refresh, refresh_s), daemon=True),
        ]

    def start(self) -> None:
        self.probe()
        self.refresh()
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()

    def statuses(self) -> dict[str, EndpointStatus]:
        with self._lock:
            return dict(self._statuses)

    def refresh(self) -> None:
        try:
            statuses = self._store.statuses()
        except Exception:  # noqa: BLE001 - routing goes on with the last known statuses
            self.counts["refresh_errors"] += 1
            self._log.exception("endpoint statuses could not be read")
            return
        with self._lock:
            self._statuses = statuses

    def probe(self) -> None:
        unsettled = False
        now = time.time()
        for endpoint in self._registry.endpoints:
            probe = self._probes.get(endpoint.executor)
            try:
                answer = probe(endpoint) if probe else None
            except Exception:  # noqa: BLE001 - unknown is not down
                self.counts["probe_errors"] += 1
                self._log.exception("endpoint probe failed", extra={"endpoint": endpoint.name})
                answer = None
            health = answer if isinstance(answer, Health) else Health(answer)
            if health.up is False:
                unsettled = True
                continue  # no heartbeat: it goes stale, and the router stops choosing it
            models, ready_at = self._models(endpoint, health, now)
            unsettled = unsettled or STARTING in models.values()
            try:
                self._store.heartbeat(
                    endpoint.name,
                    capacity=endpoint.max_inflight,
                    models=models,
                    ready_at=ready_at,
                )
            except Exception:  # noqa: BLE001 - the next probe writes it again
                self.counts["heartbeat_errors"] += 1
                self._log.exception("heartbeat not written", extra={"endpoint": endpoint.name})
        self._unsettled = unsettled

    def _models(
        self, endpoint: Endpoint, health: Health, now: float
    ) -> tuple[dict[str, str], dict[str, float]]:
        if health.models is not None:
            # The endpoint's own word (a model it does not list was never loaded there).
            models = {m.model: health.models.get(m.model, COLD) for m in endpoint.models}
        else:
            status = self.statuses().get(endpoint.name)
            models = {
                m.model: STARTING
                if health.up and status and warming(status, m.model, now, self._policy)
                else HOT
                if health.up
                else COLD
                for m in endpoint.models
            }
        ready_at = {m: now + s for m, s in health.ready_in_s.items() if models.get(m) == STARTING}
        return models, ready_at

    def _probe_loop(self) -> None:
        while not self._stop.wait(min(self._probe_s, 1.0) if self._unsettled else self._probe_s):
            self.probe()

    def _loop(self, step: Callable[[], None], every_s: float) -> None:
        while not self._stop.wait(every_s):
            step()

    def wait_for_change(self, timeout_s: float) -> None:
        """Sleep until the next refresh could have brought news (used while all are full)."""
        self._stop.wait(min(timeout_s, self._refresh_s))
