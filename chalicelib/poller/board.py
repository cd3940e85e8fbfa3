"""What a poller knows of every endpoint: the shared status, refreshed, and kept alive by probes.

Two background threads per poller:

- ``refresh``: reads the ``endpoints`` table every ``refresh_s`` (one Scan: the table has one
  item per endpoint), so routing costs no AWS call per request;
- ``probe``: every ``probe_s`` asks each endpoint whether it is up and writes a heartbeat for
  those that are, with each model's state. While one is starting a model it is asked every
  second; while one is down, a local endpoint every second (its ``/health`` is on loopback), any
  other (a Globus Compute endpoint: a call to Globus's web service per poller) after 1, 2, 4 …
  seconds, capped at ``backoff_cap_s`` (``next_probe_s``). Offline, a local endpoint's ``/health`` lists its models hot | starting | cold
  and, where it has timed a load before, when a starting one will be ready; it answers 503
  while its workers start (up, its models starting). With Globus Compute,
  ``Client.get_endpoint_status`` (cached for ``probe_s``); an endpoint whose status
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
    """``globus_compute_sdk.Client.get_endpoint_status``, each answer reused for ``cache_s``
    (a model starting there is probed every second, from FIRST's own warming mark); the client
    is built on first use unless given."""

    def __init__(self, client: Any = None, *, cache_s: float = 5.0) -> None:
        self._client = client
        self._cache_s = cache_s
        self._answers: dict[str, tuple[float, bool]] = {}
        self.calls = 0

    def __call__(self, endpoint: Endpoint) -> bool | None:
        at, online = self._answers.get(endpoint.endpoint_id, (float("-inf"), False))
        if time.monotonic() - at < self._cache_s:
            return online
        if self._client is None:
            from globus_compute_sdk import Client

            self._client = Client()
        self.calls += 1
        status = self._client.get_endpoint_status(endpoint.endpoint_id)
        online = str(status.get("status", "")).lower() == "online"
        self._answers[endpoint.endpoint_id] = (time.monotonic(), online)
        return online


def next_probe_s(
    executor: str,
    *,
    down: bool,
    starting: bool,
    previous_s: float | None,
    probe_s: float,
    backoff_cap_s: float,
) -> float:
    """Seconds until an endpoint is probed again; ``previous_s`` is the last wait while it was
    down (None when it was not). Settled: ``probe_s``. Starting a model: every second. Down: a
    local endpoint every second; any other backs off 1, 2, 4 … s, capped at ``backoff_cap_s``."""
    fast = min(probe_s, 1.0)
    if down and executor != "local":
        return fast if previous_s is None else min(max(backoff_cap_s, fast), previous_s * 2)
    return fast if down or starting else probe_s


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
        backoff_cap_s: float | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._log = logger
        self._refresh_s = refresh_s
        self._probe_s = probe_s
        self._probes: dict[str, Probe] = probes or {
            "local": local_probe,
            "globus": GlobusProbe(cache_s=probe_s),
        }
        self._policy = policy or CircuitPolicy()
        # A Globus endpoint that is down is asked at least once per stale_s (30 s).
        self._backoff_cap_s = self._policy.stale_s if backoff_cap_s is None else backoff_cap_s
        # Per endpoint: when it is due (time.monotonic()), and its last wait while down.
        self._due: dict[str, float] = {}
        self._down_wait_s: dict[str, float | None] = {}
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
        """Probe every endpoint now."""
        self.probe_due(float("inf"))

    def probe_due(self, at: float | None = None) -> None:
        """Probe the endpoints due at ``at`` (``time.monotonic()``), and schedule each again."""
        at = time.monotonic() if at is None else at
        for endpoint in self._registry.endpoints:
            if self._due.get(endpoint.name, float("-inf")) > at:
                continue
            down, starting = self._probe_one(endpoint)
            wait_s = next_probe_s(
                endpoint.executor,
                down=down,
                starting=starting,
                previous_s=self._down_wait_s.get(endpoint.name),
                probe_s=self._probe_s,
                backoff_cap_s=self._backoff_cap_s,
            )
            self._down_wait_s[endpoint.name] = wait_s if down else None
            self._due[endpoint.name] = (time.monotonic() if at == float("inf") else at) + wait_s

    def _probe_one(self, endpoint: Endpoint) -> tuple[bool, bool]:
        """Ask ``endpoint`` and write its heartbeat if it is up: (down, starting a model)."""
        probe = self._probes.get(endpoint.executor)
        self.counts[f"probes_{endpoint.executor}"] += 1
        try:
            answer = probe(endpoint) if probe else None
        except Exception:  # noqa: BLE001 - unknown is not down
            self.counts["probe_errors"] += 1
            self._log.exception("endpoint probe failed", extra={"endpoint": endpoint.name})
            answer = None
        health = answer if isinstance(answer, Health) else Health(answer)
        if health.up is False:
            return True, False  # no heartbeat: it goes stale, and the router stops choosing it
        models, ready_at = self._models(endpoint, health, time.time())
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
        return False, STARTING in models.values()

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
        # Wakes every second at most; each endpoint is probed when it is due.
        while not self._stop.wait(min(self._probe_s, 1.0)):
            self.probe_due()

    def _loop(self, step: Callable[[], None], every_s: float) -> None:
        while not self._stop.wait(every_s):
            step()

    def wait_for_change(self, timeout_s: float) -> None:
        """Sleep until the next refresh could have brought news (used while all are full)."""
        self._stop.wait(min(timeout_s, self._refresh_s))
