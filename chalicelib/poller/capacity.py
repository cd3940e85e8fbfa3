"""Endpoint capacity as one poller holds it: slots leased from the shared count, in blocks.

Each endpoint's capacity is one count shared by every poller (``inflight`` on its item of the
``endpoints`` table, ``chalicelib/stores/endpoints.py``). A poller does not move that count per
request: it leases slots (one conditional update for as many as its waiting requests want and
the endpoint has room for) and hands them to its requests in memory; a finished request's slot
goes straight to the next one in its line. A busy poller therefore writes nothing per request
for capacity, where a slot taken and given back with each request cost two transactions.

Every slot is still counted exactly once: the count is the sum of the leases (``lease#<poller>``
beside it on the item), and a lease moves only by its holder's conditional writes, or by one
reclaim once it expired.

- **Linger.** A slot unused for ``linger_s`` goes back (a poller that gets a request every few
  hundred milliseconds keeps its slot and writes nothing).
- **Expiry.** Leases are renewed every third of ``lease_s``. One not renewed for ``lease_s`` (its
  poller died) is reclaimed by the first poller to see it, conditionally, so exactly once: a
  dead poller's slots come back about when its messages reappear (the visibility timeout).
- **Fair share between pollers.** A poller that finds an endpoint full says so (``want``, at
  most once a second); while peers want, a holder keeps at most an even share (capacity over
  the pollers holding or wanting) and gives the rest back as its requests finish, instead of
  handing them on.
- **A lease lost while its poller lived** (paused past ``lease_s``, reclaimed by a peer) is
  counted again for the requests still running there (``restore``), over the capacity if need
  be: they run whatever the count says.
- **Taking over.** A request re-claimed from a dead poller runs where its task already is
  (``force``): one slot more than the capacity until the dead lease is reclaimed, so the
  endpoint is never counted as freer than it is.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from aws_lambda_powertools import Logger

from chalicelib.registry import Endpoint
from chalicelib.router import EndpointStatus
from chalicelib.stores.endpoints import EndpointStore, LeaseLostError

# How often the holder wakes to renew, give back idle slots and reclaim dead leases.
TICK_S = 0.25
# A peer's lease is reclaimed this long after it expired (clocks of two hosts differ a little).
RECLAIM_GRACE_S = 1.0
# A ``want`` counts for fair share this long (a starved poller repeats it every WANT_EVERY_S).
WANT_TTL_S = 3.0
WANT_EVERY_S = 1.0
# A want this old is a gone poller's (a live one repeats it while starved): it is dropped.
WANT_FORGOTTEN_S = 60.0
# The capacity a forced take is checked against: none.
FORCED = 2**31


@dataclass
class _Held:
    capacity: int
    held: int = 0
    busy: int = 0
    until: float = 0.0
    # The most this poller hands out while peers want the endpoint (None: no limit).
    share: int | None = None
    # The fewest slots idle since ``window_at`` (time.monotonic()): those went unused all along.
    low_idle: int = 0
    window_at: float = field(default_factory=time.monotonic)
    wanted_at: float = float("-inf")
    # One write of this lease at a time (its conditions name the count this poller holds).
    io: threading.Lock = field(default_factory=threading.Lock)


class Capacity:
    def __init__(
        self,
        store: EndpointStore,
        holder: str,
        logger: Logger,
        *,
        lease_s: float,
        linger_s: float,
        statuses: Callable[[], Mapping[str, EndpointStatus]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.holder = holder
        self._log = logger
        self.lease_s = lease_s
        self.linger_s = linger_s
        self._statuses = statuses
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="slot-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop renewing and give every lease back (the requests are done by now)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for name, h in list(self._held.items()):
            with h.io:
                if h.held:
                    self._write(
                        name,
                        h,
                        partial(self._store.give_back, name, self.holder, held=h.held, n=h.held),
                    )
                    h.held = 0

    # --- what requests do -------------------------------------------------------------------

    def take(
        self,
        endpoint: Endpoint,
        status: EndpointStatus | None,
        *,
        wanted: int = 1,
        force: bool = False,
    ) -> bool:
        """One slot of ``endpoint`` for a request: a free one this poller leases, else a lease
        of up to ``wanted`` more if the endpoint has room (``force``: whether it has or not)."""
        h = self._state(endpoint)
        with self._lock:
            if h.busy < self._usable(h) or (force and h.busy < h.held):
                self._use(h)
                return True
        if not force and h.share is not None and h.held >= h.share:
            return False  # peers want this endpoint: no more than an even share
        if not h.io.acquire(blocking=False):
            return False  # a write of this lease is under way: ask again in a moment
        try:
            now = self._clock()
            others = _others(status, self.holder)
            room = endpoint.max_inflight - others - h.held
            if force:
                more, capacity = 1, FORCED
            elif room <= 0:
                self._want(endpoint.name, h, now)
                return False
            else:
                more, capacity = max(1, min(wanted, room)), endpoint.max_inflight
            lease = partial(
                self._store.lease,
                endpoint.name,
                self.holder,
                held=h.held,
                more=more,
                capacity=capacity,
                until=now + self.lease_s,
            )
            granted = self._write(endpoint.name, h, lease)
            if not granted:
                self._want(endpoint.name, h, now)
                return False
            self.counts["slot_leases"] += 1
            with self._lock:
                h.held += granted
                h.until = now + self.lease_s
                self._use(h)
            return True
        finally:
            h.io.release()

    def give(self, name: str) -> None:
        """A request's task on endpoint ``name`` is done: its slot goes to the next request."""
        with self._lock:
            self._held[name].busy -= 1
            self._lock.notify_all()

    def wait(self, timeout_s: float) -> None:
        """Sleep until a slot is given back here, or ``timeout_s`` passes."""
        with self._lock:
            self._lock.wait(timeout_s)

    def view(self, statuses: Mapping[str, EndpointStatus]) -> dict[str, EndpointStatus]:
        """The statuses as this poller can use them: its own lease counted as the slots in use
        (its idle slots are free to it), the peers' leases as last read."""
        with self._lock:
            mine = {n: h.busy for n, h in self._held.items() if h.held}
        out = dict(statuses)
        for name, busy in mine.items():
            status = statuses.get(name)
            if status is not None:
                out[name] = replace(status, inflight=_others(status, self.holder) + busy)
        return out

    def held(self, name: str) -> tuple[int, int]:
        """(slots leased, slots in use) on endpoint ``name``."""
        with self._lock:
            h = self._held.get(name)
            return (h.held, h.busy) if h else (0, 0)

    # --- upkeep ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Renew leases that are due, give back idle slots (and any above a fair share while
        peers want the endpoint), reclaim peers' expired leases and forget gone pollers' wants."""
        now = self._clock()
        statuses = self._statuses()
        for name, h in list(self._held.items()):
            self._share(h, statuses.get(name), now)
            with h.io:
                with self._lock:
                    surplus = h.held - h.share if h.share is not None else 0
                    back = min(h.held - h.busy, max(0, surplus))
                    if time.monotonic() - h.window_at >= self.linger_s:
                        back = max(back, h.low_idle)
                        h.low_idle, h.window_at = h.held - h.busy, time.monotonic()
                if back > 0:
                    self._give_back(name, h, back)
                elif h.held and h.until - now < self.lease_s * 2 / 3:
                    until = now + self.lease_s
                    held = h.held
                    renew = partial(self._store.renew, name, self.holder, held=held, until=until)
                    if self._write(name, h, renew) is not None:
                        h.until = until
        for name, status in statuses.items():
            for holder, at in status.wants.items():
                if holder != self.holder and now - at > WANT_FORGOTTEN_S:
                    self._store.forget_want(name, holder, at)
            for holder, lease in status.leases.items():
                expired = lease.until < now - RECLAIM_GRACE_S
                if holder != self.holder and expired and self._store.reclaim(name, holder, lease):
                    self.counts["slot_leases_reclaimed"] += 1
                    self._log.info(
                        "expired slot lease reclaimed",
                        extra={"endpoint": name, "holder": holder, "slots": lease.slots},
                    )

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again; leases have slack
                self.counts["slot_lease_errors"] += 1
                self._log.exception("slot lease upkeep failed")

    # --- inside -----------------------------------------------------------------------------

    def _state(self, endpoint: Endpoint) -> _Held:
        with self._lock:
            h = self._held.get(endpoint.name)
            if h is None:
                h = self._held[endpoint.name] = _Held(endpoint.max_inflight)
            return h

    @staticmethod
    def _usable(h: _Held) -> int:
        return h.held if h.share is None else min(h.held, h.share)

    @staticmethod
    def _use(h: _Held) -> None:
        h.busy += 1
        h.low_idle = min(h.low_idle, h.held - h.busy)

    def _share(self, h: _Held, status: EndpointStatus | None, now: float) -> None:
        """While peers want this endpoint, this poller's even share of it (capacity over the
        pollers holding or wanting it); else no limit."""
        wanting = {p for p, at in (status.wants if status else {}).items() if now - at < WANT_TTL_S}
        wanting.discard(self.holder)
        share = None
        if status is not None and wanting:
            live = {p for p, lease in status.leases.items() if lease.slots and lease.until >= now}
            peers = (live | wanting) - {self.holder}
            share = max(1, math.ceil(h.capacity / (len(peers) + 1)))
        with self._lock:
            h.share = share

    def _want(self, name: str, h: _Held, now: float) -> None:
        if now - h.wanted_at < WANT_EVERY_S:
            return
        h.wanted_at = now
        try:
            self._store.want(name, self.holder, now)
        except Exception:  # noqa: BLE001 - a peer keeps its slots a little longer
            self.counts["slot_lease_errors"] += 1
            self._log.exception("slot want not written", extra={"endpoint": name})

    def _give_back(self, name: str, h: _Held, n: int) -> None:
        held = h.held
        if (
            self._write(name, h, partial(self._store.give_back, name, self.holder, held=held, n=n))
            is None
        ):
            return
        with self._lock:
            h.held -= n
            h.low_idle = max(0, min(h.low_idle - n, h.held - h.busy))
        self.counts["slots_given_back"] += n

    def _write(self, name: str, h: _Held, write: Callable[[], int | None]) -> int | None:
        """Run one write of this poller's lease on ``name`` (``h.io`` held); a lease found lost
        is counted again for the slots in use. None when the write did not happen."""
        try:
            out = write()
        except LeaseLostError:
            self.counts["slot_leases_lost"] += 1
            self._log.warning("slot lease lost: counted again", extra={"endpoint": name})
            with self._lock:
                busy = h.busy
            until = self._clock() + self.lease_s
            if busy:
                self._store.restore(name, self.holder, n=busy, until=until)
            with self._lock:
                h.held, h.until = busy, until
            return None
        return 0 if out is None else out


def _others(status: EndpointStatus | None, holder: str) -> int:
    """Slots of the endpoint leased by every poller but ``holder`` (as last read)."""
    if status is None:
        return 0
    mine = status.leases.get(holder)
    return max(0, status.inflight - (mine.slots if mine else 0))
