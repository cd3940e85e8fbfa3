"""API keys (service accounts, the offline stack): hashed in DynamoDB, remembered per process.

Per key, in order: the format and checksum (``stores.keys.well_formed``; a wrong one is refused
with no AWS call and is not remembered) → this process's memory → one ``GetItem``. Both answers
are remembered: a key that exists for ``cache_ttl_s`` (the bound on how long a revoked key keeps
working in a warm process), one that does not for the shorter ``negative_ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chalicelib.auth.memo import Memo
from chalicelib.auth.principal import Principal
from chalicelib.errors import AuthenticationError
from chalicelib.stores.keys import KeyStore, hash_key, well_formed

REFUSED = "Incorrect API key provided."


def principal_of(item: dict[str, Any]) -> Principal:
    return Principal(
        id=str(item["user"]),
        username=str(item["user"]),
        kind=item["kind"],
        idp_domain=item.get("domain"),
        groups=frozenset(item.get("groups") or ()),
    )


def user_principal(user: str, keys: list[dict[str, Any]]) -> Principal | None:
    """The principal of ``user`` acting without a key (the drop folder): the one REST builds
    from the user's active keys (``KeyStore.user_keys``), or None when there is none (an unknown
    or revoked user). Keys that disagree grant only what all of them grant: the groups every
    key has, the domain only if all name it, ``service`` only if all are service keys."""
    principals = [principal_of(k) for k in keys if k.get("active", True) and k["user"] == user]
    if not principals:
        return None
    domains = {p.idp_domain for p in principals}
    return Principal(
        id=user,
        username=user,
        kind="service" if all(p.kind == "service" for p in principals) else "user",
        idp_domain=domains.pop() if len(domains) == 1 else None,
        groups=frozenset.intersection(*(p.groups for p in principals)),
    )


class ApiKeyAuthenticator:
    def __init__(
        self,
        keys: KeyStore,
        *,
        cache_ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        maxsize: int = 10_000,
        negative_maxsize: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self.memo: Memo[Principal | None] = Memo(
            maxsize=maxsize,
            ttl_s=cache_ttl_s,
            negative_ttl_s=negative_ttl_s,
            negative_maxsize=negative_maxsize,
            clock=clock,
        )

    def authenticate(self, token: str) -> Principal:
        if not well_formed(token):
            raise AuthenticationError(REFUSED)
        digest = hash_key(token)
        hit = self.memo.get(digest)
        if hit is not None:
            principal = hit.value
        else:
            item = self._keys.lookup(token)
            principal = principal_of(item) if item else None
            self.memo.put(digest, principal, negative=principal is None)
        if principal is None:
            raise AuthenticationError(REFUSED)
        return principal
