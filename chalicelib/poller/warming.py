"""Warm-ups the poller sends: ``hpc_functions.warm`` on one endpoint, at most one at a time per
(endpoint, model) in this process.

Asked for by the API (``POST /v1/models/{model}/warm`` queues ``{"warm": {model, endpoint}}``)
or by the poller itself when it routes a request to a deployment that is cold. The endpoint's
item is marked ``warming#<model>`` first (every reader sees the deployment starting), and the
mark is removed when the warm-up task returns: the model is then hot (offline, the endpoint
says so itself on the next probe), or its load failed (logged, counted).
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.compute.executors import ExecutorPool, start_warm
from chalicelib.registry import FUNCTION_KIND, Endpoint, ModelDeployment
from chalicelib.stores.endpoints import EndpointStore


class Warmer:
    def __init__(self, executors: ExecutorPool, store: EndpointStore, logger: Logger) -> None:
        self._executors = executors
        self._store = store
        self._log = logger
        self._running: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def start(self, endpoint: Endpoint, deployment: ModelDeployment) -> bool:
        """Send the warm-up unless one is running from here; False when the endpoint has no
        ``warm`` function registered or one is already on its way."""
        if deployment.engine.get("kind") == FUNCTION_KIND:
            return False  # an HPC function's job (chalicelib/jobs.py): no engine to load
        function_id = endpoint.functions.get("warm")
        key = (endpoint.name, deployment.model)
        if not function_id:
            self.counts["warm_unregistered"] += 1
            return False
        with self._lock:
            if key in self._running:
                return False
            self._running.add(key)
        try:
            self._store.mark_warming(endpoint.name, deployment.model)
            future = start_warm(self._executors.get(endpoint), function_id, deployment.engine)
        except Exception:  # noqa: BLE001 - a request for the model will warm it again
            self.counts["warm_errors"] += 1
            self._log.exception("warm-up not sent", extra={"endpoint": endpoint.name})
            with self._lock:
                self._running.discard(key)
            return False
        self.counts["warms_started"] += 1
        self._log.info("warm-up sent", extra={"endpoint": key[0], "model": key[1]})
        future.add_done_callback(lambda f: self._done(key, f))
        return True

    def _done(self, key: tuple[str, str], future: Future[Any]) -> None:
        with self._lock:
            self._running.discard(key)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            self.counts["warm_errors"] += 1
            self._log.error(
                "warm-up failed",
                extra={"endpoint": key[0], "model": key[1], "error": repr(exc)[:500]},
            )
        else:
            self._log.info("warm-up done", extra={"endpoint": key[0], "model": key[1]})
        try:
            self._store.clear_warming(*key)
        except Exception:  # noqa: BLE001 - the mark times out by itself (warm_timeout_s)
            self.counts["warm_errors"] += 1
            self._log.exception("warming mark not cleared", extra={"endpoint": key[0]})
