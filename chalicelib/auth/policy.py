"""Who Globus Auth lets in: a pure check of one token introspection, no I/O.

``AuthPolicy.check(introspection, now, groups)`` returns the ``Principal`` or raises:

- ``AuthenticationError`` (401) when the token itself is no good for us: inactive or revoked,
  expired, not yet valid, issued for another audience, missing our scope;
- ``PermissionDeniedError`` (403) when the token is good but policy says no: identity from a
  domain not allowed, a required authentication policy not satisfied, not in a required group,
  a client identity that is not on the service-account allow-list.

Every rule is off when its setting is empty. Client identities (``…@clients.auth.globus.org``)
on the allow-list are service accounts: they skip the domain, policy and group rules, which are
about people and their sessions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chalicelib.auth.principal import Principal
from chalicelib.errors import AuthenticationError, PermissionDeniedError

CLIENT_DOMAIN = "clients.auth.globus.org"
# Clocks differ a little between Globus Auth and us.
LEEWAY_S = 60.0


def domain_of(username: str | None) -> str | None:
    if not username or "@" not in username:
        return None
    return username.rsplit("@", 1)[1].lower()


@dataclass(frozen=True)
class AuthPolicy:
    audience: str
    scope: str | None = None
    allowed_domains: frozenset[str] = frozenset()
    required_policies: tuple[str, ...] = ()
    required_groups: frozenset[str] = frozenset()
    service_clients: frozenset[str] = frozenset()
    # Look group memberships up (required groups, or model access rules that name groups).
    needs_groups: bool = False

    @classmethod
    def create(
        cls,
        audience: str,
        *,
        scope: str | None = None,
        allowed_domains: Iterable[str] = (),
        required_policies: Iterable[str] = (),
        required_groups: Iterable[str] = (),
        service_clients: Iterable[str] = (),
        group_rules: bool = False,
    ) -> AuthPolicy:
        groups = frozenset(required_groups)
        return cls(
            audience=audience,
            scope=scope,
            allowed_domains=frozenset(d.lower() for d in allowed_domains),
            required_policies=tuple(required_policies),
            required_groups=groups,
            service_clients=frozenset(service_clients),
            needs_groups=bool(groups) or group_rules,
        )

    def check(
        self, introspection: dict[str, Any], now: float, groups: frozenset[str] | None = None
    ) -> Principal:
        self._check_token(introspection, now)
        sub = str(introspection.get("sub") or "")
        username = str(introspection.get("username") or sub)
        if domain_of(username) == CLIENT_DOMAIN and self.service_clients:
            if sub not in self.service_clients:
                raise PermissionDeniedError("This client identity is not allowed to use FIRST.")
            return Principal(
                id=sub,
                username=username,
                kind="service",
                idp_domain=CLIENT_DOMAIN,
                groups=groups or frozenset(),
            )
        domain = self._check_domain(introspection, username)
        self._check_policies(introspection)
        if self.required_groups:
            if groups is None:
                raise ValueError("required groups are configured but no groups were looked up")
            if not groups & self.required_groups:
                raise PermissionDeniedError(
                    "You are not a member of a Globus group that may use FIRST."
                )
        return Principal(
            id=sub, username=username, kind="user", idp_domain=domain, groups=groups or frozenset()
        )

    def _check_token(self, data: dict[str, Any], now: float) -> None:
        if not data.get("active"):
            raise AuthenticationError("The access token is not active (expired or revoked).")
        if not data.get("sub"):
            raise AuthenticationError("The access token names no identity.")
        exp = data.get("exp")
        if exp is None or float(exp) <= now:
            raise AuthenticationError("The access token has expired; run `first token` again.")
        nbf = data.get("nbf")
        if nbf is not None and float(nbf) > now + LEEWAY_S:
            raise AuthenticationError("The access token is not valid yet.")
        aud = data.get("aud") or []
        audiences = [aud] if isinstance(aud, str) else list(aud)
        if self.audience not in audiences:
            raise AuthenticationError("The access token was not issued for this gateway.")
        if self.scope and self.scope not in str(data.get("scope") or "").split():
            raise AuthenticationError(f"The access token does not carry the scope {self.scope}.")

    def _check_domain(self, data: dict[str, Any], username: str) -> str | None:
        """The identity provider domain the caller signed in with (checked when configured).

        ``sub`` is the account's primary identity whichever linked identity signed in, so the
        domains that count are those of identities that authenticated in this session; without
        session information, the primary identity's.
        """
        authenticated = set((data.get("session_info") or {}).get("authentications") or {})
        signed_in: list[str | None] = [
            domain
            for identity in data.get("identity_set_detail") or []
            if identity.get("id") in authenticated
            and (domain := domain_of(identity.get("username")))
        ] or [domain_of(username)]
        if not self.allowed_domains:
            return signed_in[0]
        for domain in signed_in:
            if domain in self.allowed_domains:
                return domain
        allowed = ", ".join(sorted(self.allowed_domains))
        raise PermissionDeniedError(
            f"Sign in with an identity from an allowed organization ({allowed})."
        )

    def _check_policies(self, data: dict[str, Any]) -> None:
        evaluations = data.get("policy_evaluations") or {}
        for policy in self.required_policies:
            if not (evaluations.get(policy) or {}).get("evaluation"):
                raise PermissionDeniedError(
                    f"Your session does not satisfy the authentication policy {policy}; "
                    "sign in again with `first login`."
                )
