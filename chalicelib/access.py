"""Who may use which model: pure rules, read from the deployment registry.

A model's ``"access": {"groups": [...], "domains": [...]}`` admits a principal that is in any of
the groups (Globus group ids, or the groups on an API key) or whose identity provider domain is
one of the domains. No ``access`` means everyone who can authenticate. A model the caller may not
use answers exactly like one that does not exist (404 ``model_not_found``): its name is not
revealed to those outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.auth.principal import Principal


@dataclass(frozen=True)
class AccessRule:
    groups: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AccessRule | None:
        if data is None:
            return None
        unknown = set(data) - {"groups", "domains"}
        if unknown:
            raise ValueError(f"unknown access keys: {sorted(unknown)}")
        return cls(
            groups=frozenset(str(g) for g in data.get("groups", [])),
            domains=frozenset(str(d).lower() for d in data.get("domains", [])),
        )


def may_use(principal: Principal, rule: AccessRule | None) -> bool:
    if rule is None:
        return True
    if principal.groups & rule.groups:
        return True
    return principal.idp_domain is not None and principal.idp_domain.lower() in rule.domains


def uses_groups(rules: list[AccessRule | None]) -> bool:
    """Whether any rule names a group (then Globus group memberships must be looked up)."""
    return any(rule is not None and rule.groups for rule in rules)
