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
        # Woken when this place comes up (the gate's lock): only the one next up is woken.
        self.turn = threading.Condition(gate._lock)

    def wait_turn(self, timeout_s: float) -> bool:
        """Block until this request is next up (True) or ``timeout_s`` passes (False)."""
        return self._gate._wait_turn(self, timeout_s)

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
    """The line itself. A change (an arrival, a start, a request leaving) wakes only the
    request next up, not every waiting one: with 128 requests held, waking all of them on each
    change cost the poller more CPU than the requests' own AWS calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[str, int]] = {}
        self._places: dict[int, Place] = {}
        self._running: Counter[str] = Counter()
        self._tickets = itertools.count()

    @contextmanager
    def line(self, owner: str) -> Iterator[Place]:
        with self._lock:
            ticket = next(self._tickets)
            place = self._places[ticket] = Place(self, ticket, owner)
            self._waiting[ticket] = (owner, ticket)
            self._changed()
        try:
            yield place
        finally:
            with self._lock:
                self._waiting.pop(ticket, None)
                self._places.pop(ticket, None)
                if place.running:
                    self._running[owner] -= 1
                    if self._running[owner] <= 0:
                        del self._running[owner]
                self._changed()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _changed(self) -> None:
        """Wake the request next up (the lock held)."""
        up = next_up(self._waiting, self._running)
        if up is not None:
            self._places[up].turn.notify()

    def _wait_turn(self, place: Place, timeout_s: float) -> bool:
        with self._lock:
            return place.turn.wait_for(
                lambda: next_up(self._waiting, self._running) == place.ticket, timeout_s
            )

    def _start(self, place: Place) -> None:
        with self._lock:
            self._waiting.pop(place.ticket, None)
            self._running[place.owner] += 1
            place.running = True
            self._changed()

    def _aside(self, place: Place) -> None:
        with self._lock:
            self._waiting.pop(place.ticket, None)
            self._changed()

    def _back(self, place: Place) -> None:
        with self._lock:
            if place.running:
                self._running[place.owner] -= 1
                if self._running[place.owner] <= 0:
                    del self._running[place.owner]
                place.running = False
            self._waiting[place.ticket] = (place.owner, place.ticket)
            self._changed()
