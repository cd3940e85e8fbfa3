"""A consumer's leases: the SQS messages it holds, kept invisible by one heartbeat thread.

A message's visibility timeout is the lease on its work (a request, a batch). The poller's is
short (``lease_s``, 10 s by default) so that when a poller dies, a peer sees the message again
and takes the request over well within the API's wait. While the process lives, a heartbeat every third of the lease
extends every held message at once (``ChangeMessageVisibilityBatch``, ten per call): one call
per ten running requests per beat, and none for requests that finish within the first beat.
"""

from __future__ import annotations

import threading
from collections import Counter

from aws_lambda_powertools import Logger

from chalicelib.stores.queue import RequestQueue


class Leases:
    def __init__(self, queue: RequestQueue, lease_s: int, logger: Logger) -> None:
        self._queue = queue
        self.lease_s = lease_s
        self._log = logger
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    @property
    def interval_s(self) -> float:
        return max(0.5, self.lease_s / 3)

    def hold(self, receipt: str) -> None:
        with self._lock:
            self._held.add(receipt)

    def release(self, receipt: str) -> None:
        with self._lock:
            self._held.discard(receipt)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def beat(self) -> None:
        """Extend every held message by one lease (the heartbeat thread calls this)."""
        receipts = self.held()
        if not receipts:
            return
        try:
            failed = self._queue.extend_many(receipts, self.lease_s)
        except Exception:  # noqa: BLE001 - the next beat tries again; the lease has slack
            self.counts["heartbeat_errors"] += 1
            self._log.exception("lease heartbeat failed", extra={"held": len(receipts)})
            return
        self.counts["heartbeats"] += 1
        if failed:
            # The message was deleted or its receipt went stale (it reappeared and a peer holds
            # it now): nothing to extend. The request's conditional writes settle who finishes.
            self.counts["lost_leases"] += len(failed)
            self._log.warning("leases could not be extended", extra={"failed": len(failed)})
            with self._lock:
                self._held.difference_update(failed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()
