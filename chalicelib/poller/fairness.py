"""Fair share between users: who gets the next free endpoint slot.

A poller holds many more requests than endpoints have slots (``poller_max_inflight``), so one
user's flood is received into the poller rather than left in SQS ahead of everyone else. Among
the requests waiting for a slot, the next one to try is the one whose owner has the fewest
requests running, then the earliest to arrive (``next_up``): a user with nothing running goes
before a user with many, so another user's first request waits for at most one slot to free
(the bound documented in docs/operations.md), however many requests the flooding user queued
— as long as they fit in what the poller holds.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def next_up(waiting: Mapping[int, tuple[str, int]], running: Mapping[str, int]) -> int | None:
    """The ticket that may try for a slot now: fewest running for its owner, then oldest."""
    if not waiting:
        return None
    return min(waiting, key=lambda t: (running.get(waiting[t][0], 0), waiting[t][1]))


class Place:
    """One request's place in line (see ``FairGate.line``)."""

    def __init__(self, gate: FairGate, ticket: int, owner: str) -> None:
        self._gate = gate
        self.ticket = ticket
        self.owner = owner
        self.running = False

    def wait_turn(self, timeout_s: float) -> bool:
        """Block until this request is next up (True) or ``timeout_s`` passes (False)."""
        return self._gate._wait_turn(self.ticket, timeout_s)

    def start(self) -> None:
        """It has a slot: out of the line, counted as running for its owner."""
        self._gate._start(self)

    def back_in_line(self) -> None:
        """Its endpoint failed: wait again, keeping its place by arrival."""
        self._gate._back(self)

    def step_aside(self) -> None:
        """Out of the line while nothing can run it (no endpoint online): the requests behind
        it go first meanwhile; ``back_in_line`` returns it to its place by arrival."""
        self._gate._aside(self)


class FairGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[int, tuple[str, int]] = {}
        self._running: Counter[str] = Counter()
        self._tickets = itertools.count()

    @contextmanager
    def line(self, owner: str) -> Iterator[Place]:
        with self._cond:
            ticket = next(self._tickets)
            self._waiting[ticket] = (owner, ticket)
            self._cond.notify_all()
        place = Place(self, ticket, owner)
        try:
            yield place
        finally:
            with self._cond:
                self._waiting.pop(ticket, None)
                if place.running:
                    self._running[owner] -= 1
                    if self._running[owner] <= 0:
                        del self._running[owner]
                self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def _wait_turn(self, ticket: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: next_up(self._waiting, self._running) == ticket, timeout_s
            )

    def _start(self, place: Place) -> None:
        with self._cond:
            self._waiting.pop(place.ticket, None)
            self._running[place.owner] += 1
            place.running = True
            self._cond.notify_all()

    def _aside(self, place: Place) -> None:
        with self._cond:
            self._waiting.pop(place.ticket, None)
            self._cond.notify_all()

    def _back(self, place: Place) -> None:
        with self._cond:
            if place.running:
                self._running[place.owner] -= 1
                if self._running[place.owner] <= 0:
                    del self._running[place.owner]
                place.running = False
            self._waiting[place.ticket] = (place.owner, place.ticket)
            self._cond.notify_all()
