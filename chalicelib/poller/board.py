"""What a poller knows of every endpoint: the shared status, refreshed, and kept alive by probes.

Two background threads per poller:

- ``refresh``: reads the ``endpoints`` table every ``refresh_s`` (one Scan: the table has one
  item per endpoint), so routing costs no AWS call per request;
- ``probe``: every ``probe_s`` asks each endpoint whether it is up and writes a heartbeat for
  those that are. Offline, a local endpoint's ``/health`` answers only once its engines are warm,
  so its models are hot. With Globus Compute, ``Client.get_endpoint_status`` (cached for the
  probe interval); an endpoint whose status cannot be read is not declared down (the circuit
  breaker catches real failures), only one that Globus reports offline.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.registry import Endpoint, Registry
from chalicelib.router import COLD, HOT, EndpointStatus
from chalicelib.stores.endpoints import EndpointStore

# Returns True (up), False (down) or None (could not tell) for one endpoint.
Probe = Callable[[Endpoint], "bool | None"]


def local_probe(endpoint: Endpoint) -> bool | None:
    import requests

    if not endpoint.url:
        return None
    try:
        return requests.get(f"{endpoint.url.rstrip('/')}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


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
    ) -> None:
        self._registry = registry
        self._store = store
        self._log = logger
        self._refresh_s = refresh_s
        self._probe_s = probe_s
        self._probes: dict[str, Probe] = probes or {"local": local_probe, "globus": GlobusProbe()}
        self._statuses: dict[str, EndpointStatus] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._threads = [
            threading.Thread(target=self._loop, args=(self.probe, probe_s), daemon=True),
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
        for endpoint in self._registry.endpoints:
            probe = self._probes.get(endpoint.executor)
            try:
                up = probe(endpoint) if probe else None
            except Exception:  # noqa: BLE001 - unknown is not down
                self.counts["probe_errors"] += 1
                self._log.exception("endpoint probe failed", extra={"endpoint": endpoint.name})
                up = None
            if up is False:
                continue  # no heartbeat: it goes stale, and the router stops choosing it
            models = {m.model: HOT if up else COLD for m in endpoint.models}
            try:
                self._store.heartbeat(endpoint.name, capacity=endpoint.max_inflight, models=models)
            except Exception:  # noqa: BLE001 - the next probe writes it again
                self.counts["heartbeat_errors"] += 1
                self._log.exception("heartbeat not written", extra={"endpoint": endpoint.name})

    def _loop(self, step: Callable[[], None], every_s: float) -> None:
        while not self._stop.wait(every_s):
            step()

    def wait_for_change(self, timeout_s: float) -> None:
        """Sleep until the next refresh could have brought news (used while all are full)."""
        self._stop.wait(min(timeout_s, self._refresh_s))
