"""A small LRU of prompt-prefix KV caches for the transformers engine (vLLM's automatic prefix
caching, in miniature): a request whose prompt starts with tokens a recent request of the same
``cache_salt`` ran skips their prefill, and reports them as ``cached_tokens``.

Entries are transformers ``DynamicCache`` objects keyed by the tokens they hold (a prompt and
what was generated after it) and the salt: a lookup takes the entry sharing the longest common
prefix with the new prompt, copies it and crops the copy to that prefix (at least one prompt
token is always left to run, as ``generate`` needs). Only single-row requests use it (a batch of
left-padded rows has no common positions to reuse).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

# Shorter shared prefixes are not worth a copy of the cache.
MIN_TOKENS = 4


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def crop_to(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (transformers 5 crops by a negative
    count of positions to remove)."""
    remove = int(cache.get_seq_length()) - length
    if remove > 0:
        cache.crop(-remove)


class PrefixCache:
    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()

    def lookup(self, salt: str, prompt: Sequence[int]) -> tuple[Any | None, int]:
        """A private copy of the best cache for ``prompt`` cropped to what it shares with it,
        and how many tokens that is (``(None, 0)`` when none shares ``MIN_TOKENS``)."""
        with self._lock:
            best, best_n = None, 0
            for key in self._items:
                if key[0] != salt:
                    continue
                n = min(_common(key[1], prompt), len(prompt) - 1)
                if n > best_n:
                    best, best_n = key, n
            if best is None or best_n < MIN_TOKENS:
                return None, 0
            self._items.move_to_end(best)
            cache = copy.deepcopy(self._items[best])
        crop_to(cache, best_n)
        return cache, best_n

    def store(self, salt: str, tokens: Sequence[int], cache: Any) -> None:
        """Keep ``cache``, which holds the KV of ``tokens`` (its owner no longer uses it)."""
        if self.entries <= 0 or len(tokens) < MIN_TOKENS:
            return
        with self._lock:
            key = (salt, tuple(tokens))
            self._items[key] = cache
            self._items.move_to_end(key)
            # An entry whose tokens the new one extends is not needed any more.
            for old in [k for k in self._items if k != key and k[0] == salt]:
                if len(old[1]) <= len(tokens) and tuple(tokens[: len(old[1])]) == old[1]:
                    del self._items[old]
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
