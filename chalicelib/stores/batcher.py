"""Group commit in the background: items added from any thread are written in batches.

``add`` returns at once; a thread hands the items to ``_write`` in batches of at most ``size``,
when ``size`` are waiting or ``max_delay_s`` after the last write, whichever comes first, so the
caller's request never waits on the call and N items cost about N/size calls. Woken by a full
batch, the thread writes full batches only: the few that arrived meanwhile wait for company
(or for ``max_delay_s``) rather than go out alone. ``close`` writes
what is left. Used where losing an item to a crash is acceptable and said so: SQS deletes
(``deleter``), usage records (``usage``).

``_write`` returns how many items of the batch failed, having logged why; a ``_write`` that
raises is logged here and its whole batch counted. Either way ``failures`` counts them and
``on_failure`` (a metric, say) hears of them: no failure is silent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from aws_lambda_powertools import Logger

T = TypeVar("T")


class BackgroundBatcher(Generic[T]):
    def __init__(
        self,
        *,
        size: int,
        max_delay_s: float,
        logger: Logger,
        name: str,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        self._size = size
        self._delay = max_delay_s
        self._log = logger
        self._on_failure = on_failure
        self._pending: list[T] = []
        self._lock = threading.Lock()
        # One flush at a time: the thread and a caller's ``flush``/``close`` never interleave.
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _write(self, batch: list[T]) -> int:
        """Write one batch; the number of its items that failed (already logged)."""
        raise NotImplementedError

    def add(self, item: T) -> None:
        with self._lock:
            self._pending.append(item)
            full = len(self._pending) >= self._size
        if full:
            self._wake.set()

    def flush(self, *, full_only: bool = False) -> None:
        """Write what is waiting (``full_only``: only whole batches of ``size``)."""
        with self._flushing:
            while True:
                with self._lock:
                    if full_only and len(self._pending) < self._size:
                        return
                    batch = self._pending[: self._size]
                    self._pending = self._pending[self._size :]
                if not batch:
                    return
                try:
                    failed = self._write(batch)
                except Exception:  # noqa: BLE001 - counted and logged; the next batch goes on
                    self._log.exception("batch write failed", extra={"items": len(batch)})
                    failed = len(batch)
                # Each batch on its own: what ``close`` leaves behind is then written or counted.
                if failed:
                    self._count(failed)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()

    def _count(self, n: int) -> None:
        with self._lock:
            self.failures += n
        if self._on_failure is not None:
            self._on_failure(n)

    def _run(self) -> None:
        while not self._closed:
            woken = self._wake.wait(self._delay)
            self._wake.clear()
            self.flush(full_only=woken and not self._closed)
