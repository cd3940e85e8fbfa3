"""This process's memory of authentication answers: bounded, thread-safe, with expiry.

Both authenticators keep what they learnt about a token (a principal, an introspection) here, so
a warm process answers repeated tokens with no AWS call. Two bounds keep it safe to leave running:

- **size**: at most ``maxsize`` positive and ``negative_maxsize`` negative entries, least
  recently used dropped first. Negatives (a wrong key, an inactive token) live apart, so a flood
  of wrong tokens cannot push real users' entries out.
- **time**: a positive entry is trusted for ``ttl_s`` (the bound on how late a revocation is
  seen), a negative one for the shorter ``negative_ttl_s`` (a key read right after it was created
  may still be missing from an eventually consistent read); neither beyond ``until`` when given
  (a token's own expiry).

``ttl_s <= 0`` turns the memory off. Times come from ``clock`` so tests can move it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TLRUCache

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    value: V
    negative: bool
    expires_at: float


def _expiry(key: str, entry: Cached[V], now: float) -> float:
    return entry.expires_at


class Memo(Generic[V]):
    def __init__(
        self,
        *,
        maxsize: int,
        ttl_s: float,
        negative_ttl_s: float,
        negative_maxsize: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.negative_maxsize = maxsize if negative_maxsize is None else negative_maxsize
        self._ttl_s = ttl_s
        self._negative_ttl_s = min(negative_ttl_s, ttl_s)
        self._clock = clock
        self._positive: TLRUCache[str, Cached[V]] = TLRUCache(maxsize, _expiry, timer=clock)
        self._negative: TLRUCache[str, Cached[V]] = TLRUCache(
            self.negative_maxsize, _expiry, timer=clock
        )
        # cachetools caches are not thread-safe, and even a read may evict expired entries.
        self._lock = threading.Lock()

    def get(self, key: str) -> Cached[V] | None:
        """The live entry for ``key``, or None (never seen, expired or dropped)."""
        with self._lock:
            return self._positive.get(key) or self._negative.get(key)

    def put(
        self, key: str, value: V, *, negative: bool = False, until: float | None = None
    ) -> None:
        now = self._clock()
        expires_at = now + (self._negative_ttl_s if negative else self._ttl_s)
        if until is not None:
            expires_at = min(expires_at, until)
        if expires_at <= now:
            return
        entry = Cached(value, negative, expires_at)
        with self._lock:
            # A key moves between the two when its answer changes; only the newest counts.
            (self._positive if negative else self._negative).pop(key, None)
            (self._negative if negative else self._positive)[key] = entry

    def __len__(self) -> int:
        with self._lock:
            return len(self._positive) + len(self._negative)

    def counts(self) -> tuple[int, int]:
        """(positive, negative) entries held now, expired ones not yet dropped included."""
        with self._lock:
            return len(self._positive), len(self._negative)
