"""API keys (service accounts, the offline stack): hashed in DynamoDB, cached per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from chalicelib.auth.principal import Principal
from chalicelib.errors import AuthenticationError
from chalicelib.stores.keys import KeyStore, hash_key


class ApiKeyAuthenticator:
    """Looks keys up by hash; a warm process answers from memory for ``cache_ttl_s``.

    The cache bounds how long a revoked key keeps working in a warm process (default 60 s), in
    exchange for zero DynamoDB reads on the hot path.
    """

    def __init__(
        self,
        keys: KeyStore,
        *,
        cache_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, token: str) -> Principal:
        digest = hash_key(token)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            item = self._keys.lookup(token)
            principal = (
                Principal(
                    id=str(item["user"]),
                    username=str(item["user"]),
                    kind=item["kind"],
                    idp_domain=item.get("domain"),
                    groups=frozenset(item.get("groups") or ()),
                )
                if item
                else None
            )
            with self._lock:
                self._cache[digest] = (now + self._ttl, principal)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        return principal
