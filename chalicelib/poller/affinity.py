"""The poller's side of conversation affinity: put a request's home first, note moves.

The choice itself is pure (``chalicelib/router.py``: ``home_of``, ``prefer_home``); this holds
what it acts on. A hit costs no AWS call: homes are read with the endpoint statuses the poller
reads anyway (``board``). A request that ran anywhere but its key's home writes one update, the
move (``EndpointStore.move_home``), and this poller remembers it until its board has read it back,
so the conversation's next turn follows at once here too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from aws_lambda_powertools import Logger

from chalicelib import metrics, router
from chalicelib.metrics import MetricsRecorder
from chalicelib.router import AffinityPolicy, Candidate, CircuitPolicy, EndpointStatus
from chalicelib.stores.endpoints import EndpointStore

# A move this poller wrote is kept here this long: its board reads it back within a refresh.
REMEMBER_S = 30.0


@dataclass(frozen=True)
class Placement:
    """Where a request with affinity key ``key`` should run: ``home`` (None: no candidates),
    and whether it was put there (``hit``) or refused (``miss``)."""

    key: str
    home: str | None
    verdict: str


class Homes:
    def __init__(
        self,
        endpoints: EndpointStore,
        logger: Logger,
        counts: Counter[str],
        *,
        policy: AffinityPolicy | None = None,
        circuit_policy: CircuitPolicy | None = None,
        recorder: MetricsRecorder | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._log = logger
        self._counts = counts
        self._policy = policy or AffinityPolicy()
        self._circuit_policy = circuit_policy or CircuitPolicy()
        self._recorder = recorder
        self._lock = threading.Lock()
        # key → (endpoint, when) of the moves this poller wrote.
        self._moved: dict[str, tuple[str, float]] = {}

    def order(
        self,
        key: str | None,
        candidates: list[Candidate],
        ranked: list[Candidate],
        statuses: Mapping[str, EndpointStatus],
    ) -> tuple[list[Candidate], Placement | None]:
        """``ranked`` with the key's endpoint first (unchanged without a key)."""
        if key is None:
            return ranked, None
        now = time.time()
        home = router.home_of(key, candidates, statuses, now, self._policy)
        with self._lock:
            mine = self._moved.get(key)
        if mine is not None and home != mine[0]:
            read = statuses.get(home or "")
            if read is None or read.homes.get(key, 0.0) < mine[1]:
                home = mine[0]  # our own move, not read back yet
        ordered, verdict = router.prefer_home(
            ranked, key, home, statuses, now, self._policy, self._circuit_policy
        )
        return ordered, Placement(key, home, verdict)

    def ran(
        self, placement: Placement | None, endpoint: str, statuses: Mapping[str, EndpointStatus]
    ) -> None:
        """The request ran on ``endpoint``: count it, and note a move away from its home."""
        if placement is None:
            return
        hit = endpoint == placement.home
        self._counts[f"affinity_{'hits' if hit else 'misses'}"] += 1
        if self._recorder is not None:
            metrics.affinity_routed(self._recorder, endpoint=endpoint, hit=hit)
        if hit:
            return
        now = time.time()
        status = statuses.get(endpoint)
        expired = [
            k
            for k, at in (status.homes if status else {}).items()
            if now - at >= self._policy.ttl_s
        ]
        try:
            self._endpoints.move_home(endpoint, placement.key, expired=expired, now=now)
        except Exception:  # noqa: BLE001 - the request ran; its next turn may move again
            self._counts["affinity_move_errors"] += 1
            self._log.exception("affinity move not recorded", extra={"endpoint": endpoint})
            return
        self._counts["affinity_moves"] += 1
        if self._recorder is not None:
            metrics.affinity_moved(self._recorder, endpoint=endpoint)
        with self._lock:
            self._moved[placement.key] = (endpoint, now)
            for k in [k for k, (_, at) in self._moved.items() if now - at > REMEMBER_S]:
                del self._moved[k]
