"""Globus Auth access tokens → ``Principal``: introspect (cached), then the pure policy check.

Per token, in order: this process's memory (``chalicelib.auth.memo``: ``local_ttl_s``, at most
``local_maxsize`` entries, 0 AWS calls) → the shared DynamoDB cache (1 read) → Globus Auth
(introspection with identity set and session info; group memberships through a dependent token
when needed), whose result goes back into both caches for min(``cache_ttl_s``, the token's
remaining life); an inactive token for ``failure_ttl_s`` (a negative entry: kept apart in this
process's memory, so bad tokens cannot evict good ones). The cache holds the trimmed
introspection, not the verdict, so the policy is re-checked on every call: a token that expires,
or a rule that tightens, takes effect at once. What a cache cannot see is a revocation at
Globus: that is noticed within ``cache_ttl_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import globus_sdk
from globus_sdk.transport import RetryConfig

from chalicelib.auth.cache import IntrospectionCache
from chalicelib.auth.memo import Memo
from chalicelib.auth.policy import AuthPolicy
from chalicelib.auth.principal import Principal
from chalicelib.errors import UpstreamUnavailableError
from chalicelib.settings import Settings
from chalicelib.stores.keys import hash_key

log = logging.getLogger(__name__)

INCLUDE = "session_info,identity_set_detail"
GROUPS_SCOPE = str(globus_sdk.GroupsClient.scopes.view_my_groups_and_memberships)
GROUPS_RESOURCE_SERVER = globus_sdk.GroupsClient.resource_server
# Only what the policy reads is cached: no names, no e-mail addresses.
_FIELDS = ("active", "scope", "client_id", "sub", "username", "aud", "exp", "nbf", "iat")
_IDENTITY_FIELDS = ("id", "username", "identity_provider", "status")
# A caller is waiting (and API Gateway cuts at 29 s): one quick retry, not the SDK's five.
QUICK_RETRY = RetryConfig(max_retries=1, max_sleep=1)
# Entries kept in memory per process before the least recently used are dropped.
LOCAL_MAXSIZE = 10_000

GroupsLookup = Callable[[str], frozenset[str]]


def trim(introspection: dict[str, Any]) -> dict[str, Any]:
    out = {k: introspection[k] for k in _FIELDS if k in introspection}
    if not out.get("active"):
        return {"active": False}
    out["identity_set_detail"] = [
        {k: i.get(k) for k in _IDENTITY_FIELDS}
        for i in introspection.get("identity_set_detail") or []
    ]
    authentications = (introspection.get("session_info") or {}).get("authentications") or {}
    out["session_info"] = {"authentications": {k: {} for k in authentications}}
    if "policy_evaluations" in introspection:
        out["policy_evaluations"] = {
            k: {"evaluation": bool((v or {}).get("evaluation"))}
            for k, v in introspection["policy_evaluations"].items()
        }
    return out


class GlobusGroups:
    """A user's active Globus group ids: dependent token for Groups, then ``get_my_groups``."""

    def __init__(self, auth_client: globus_sdk.ConfidentialAppAuthClient) -> None:
        self._auth = auth_client

    def __call__(self, token: str) -> frozenset[str]:
        try:
            tokens = self._auth.oauth2_get_dependent_tokens(token, scope=GROUPS_SCOPE)
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status >= 500:
                raise
            # The token does not allow a dependent Groups token: no memberships we can see.
            return frozenset()
        data = tokens.by_resource_server.get(GROUPS_RESOURCE_SERVER)
        if not data:
            return frozenset()
        client = globus_sdk.GroupsClient(
            authorizer=globus_sdk.AccessTokenAuthorizer(data["access_token"])
        )
        return frozenset(str(g["id"]) for g in client.get_my_groups(statuses="active"))


class GlobusAuthenticator:
    def __init__(
        self,
        auth_client: globus_sdk.ConfidentialAppAuthClient,
        cache: IntrospectionCache,
        policy: AuthPolicy,
        *,
        groups_lookup: GroupsLookup | None = None,
        cache_ttl_s: float = 600.0,
        failure_ttl_s: float = 30.0,
        local_ttl_s: float = 60.0,
        local_maxsize: int = LOCAL_MAXSIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth_client
        self._cache = cache
        self._policy = policy
        self._groups = groups_lookup or GlobusGroups(auth_client)
        self._ttl = cache_ttl_s
        self._failure_ttl = failure_ttl_s
        self._clock = clock
        # Epoch seconds (``clock``), as entries end no later than the token's own expiry.
        self.memo: Memo[dict[str, Any]] = Memo(
            maxsize=local_maxsize,
            ttl_s=local_ttl_s,
            negative_ttl_s=failure_ttl_s,
            clock=clock,
        )

    def authenticate(self, token: str) -> Principal:
        key = hash_key(token)
        now = self._clock()
        hit = self.memo.get(key)
        if hit is not None:
            entry = hit.value
        else:
            cached = self._cache.get(key, now)
            if cached is None or self._stale(cached[0]):
                entry, expires_at = self._introspect(token, now)
                self._cache.put(key, entry, expires_at)
            else:
                entry, expires_at = cached
            self.memo.put(key, entry, negative=not entry.get("active"), until=expires_at)
        groups = frozenset(entry["groups"]) if "groups" in entry else None
        return self._policy.check(entry, now, groups)

    def _stale(self, entry: dict[str, Any]) -> bool:
        """Cached before a group rule or a required policy was configured: ask Globus again,
        rather than refuse everyone until the entry expires."""
        if not entry.get("active"):
            return False
        if self._policy.needs_groups and "groups" not in entry:
            return True
        evaluated = entry.get("policy_evaluations") or {}
        return any(p not in evaluated for p in self._policy.required_policies)

    def _introspect(self, token: str, now: float) -> tuple[dict[str, Any], float]:
        policies = self._policy.required_policies
        try:
            response = self._auth.oauth2_token_introspect(
                token,
                include=INCLUDE,
                query_params={"authentication_policies": ",".join(policies)} if policies else None,
            )
            entry = trim(dict(response.data))
            if entry.get("active") and self._policy.needs_groups:
                entry["groups"] = sorted(self._groups(token))
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            # Not cached: the next request tries Globus again.
            log.warning("globus auth unavailable: %s", type(exc).__name__)
            raise UpstreamUnavailableError(
                "Globus Auth could not verify the token; try again shortly."
            ) from exc
        if not entry.get("active"):
            return entry, now + self._failure_ttl
        remaining = float(entry.get("exp") or now) - now
        if remaining <= 0:
            return entry, now + self._failure_ttl
        return entry, now + min(self._ttl, remaining)


def globus_authenticator(
    settings: Settings, dynamodb: Any, *, group_rules: bool = False
) -> GlobusAuthenticator:
    """The authenticator the settings describe (``globus_client_id`` must be set)."""
    if not settings.globus_client_id or settings.globus_client_secret is None:
        raise ValueError("FIRST_GLOBUS_CLIENT_ID and FIRST_GLOBUS_CLIENT_SECRET must both be set")
    client = globus_sdk.ConfidentialAppAuthClient(
        settings.globus_client_id,
        settings.globus_client_secret.get_secret_value(),
        app_name="first-gateway",
        retry_config=QUICK_RETRY,
    )
    policy = AuthPolicy.create(
        settings.globus_audience or settings.globus_client_id,
        scope=settings.globus_scope,
        allowed_domains=settings.globus_allowed_domains,
        required_policies=settings.globus_policies,
        required_groups=settings.globus_groups,
        service_clients=settings.globus_service_clients,
        group_rules=group_rules,
    )
    return GlobusAuthenticator(
        client,
        IntrospectionCache(dynamodb.Table(settings.auth_cache_table_name)),
        policy,
        cache_ttl_s=settings.globus_cache_ttl_s,
        failure_ttl_s=settings.globus_failure_ttl_s,
        local_ttl_s=settings.auth_cache_ttl_s,
    )
