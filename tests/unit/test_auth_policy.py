"""The Globus policy check: pure, over one introspection result."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.auth.globus import trim
from chalicelib.auth.policy import AuthPolicy
from chalicelib.auth.principal import Principal
from chalicelib.errors import AuthenticationError, PermissionDeniedError

NOW = 1_800_000_000.0
AUD = "11111111-2222-3333-4444-555555555555"
SCOPE = f"https://auth.globus.org/scopes/{AUD}/action_all"
ALICE = "aaaaaaaa-0000-0000-0000-000000000001"
ALICE_GMAIL = "aaaaaaaa-0000-0000-0000-000000000002"
ROBOT = "cccccccc-0000-0000-0000-000000000003"


def token(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "active": True,
        "scope": SCOPE,
        "client_id": "native-app",
        "sub": ALICE,
        "username": "alice@anl.gov",
        "name": "Alice",
        "email": "alice@anl.gov",
        "aud": [AUD, "auth.globus.org"],
        "exp": NOW + 3600,
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "identity_set_detail": [
            {"id": ALICE, "username": "alice@anl.gov", "identity_provider": "idp-anl"},
            {"id": ALICE_GMAIL, "username": "alice@gmail.com", "identity_provider": "idp-g"},
        ],
        "session_info": {"session_id": "s", "authentications": {ALICE: {"idp": "idp-anl"}}},
    }
    data.update(overrides)
    return data


def policy(**kwargs: Any) -> AuthPolicy:
    return AuthPolicy.create(AUD, scope=SCOPE, **kwargs)


def test_valid_token_gives_the_principal() -> None:
    p = policy(allowed_domains=["anl.gov"]).check(token(), NOW)
    assert p == Principal(id=ALICE, username="alice@anl.gov", kind="user", idp_domain="anl.gov")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"active": False}, "not active"),
        ({"exp": NOW - 1}, "expired"),
        ({"nbf": NOW + 3600}, "not valid yet"),
        ({"aud": ["someone-else"]}, "not issued for this gateway"),
        ({"scope": "openid email"}, "scope"),
        ({"sub": None}, "no identity"),
    ],
)
def test_unusable_tokens_are_401(change: dict[str, Any], words: str) -> None:
    with pytest.raises(AuthenticationError, match=words):
        policy().check(token(**change), NOW)


def test_identity_from_a_domain_not_allowed_is_403() -> None:
    with pytest.raises(PermissionDeniedError, match="allowed organization"):
        policy(allowed_domains=["uchicago.edu"]).check(token(), NOW)


def test_linked_identity_counts_only_when_it_signed_in_this_session() -> None:
    signed_in_with_gmail = token(
        session_info={"authentications": {ALICE_GMAIL: {}}}, username="alice@anl.gov"
    )
    with pytest.raises(PermissionDeniedError):
        policy(allowed_domains=["anl.gov"]).check(signed_in_with_gmail, NOW)
    p = policy(allowed_domains=["gmail.com"]).check(signed_in_with_gmail, NOW)
    assert p.id == ALICE and p.idp_domain == "gmail.com"


def test_without_session_info_the_primary_identity_decides() -> None:
    p = policy(allowed_domains=["anl.gov"]).check(token(session_info=None), NOW)
    assert p.idp_domain == "anl.gov"


def test_required_policy_must_evaluate_true() -> None:
    rule = policy(required_policies=["pol-1"])
    with pytest.raises(PermissionDeniedError, match="pol-1"):
        rule.check(token(), NOW)
    with pytest.raises(PermissionDeniedError):
        rule.check(token(policy_evaluations={"pol-1": {"evaluation": False}}), NOW)
    assert rule.check(token(policy_evaluations={"pol-1": {"evaluation": True}}), NOW).id == ALICE


def test_required_group_membership() -> None:
    rule = policy(required_groups=["g-lab"])
    assert rule.needs_groups
    with pytest.raises(PermissionDeniedError, match="group"):
        rule.check(token(), NOW, frozenset({"g-other"}))
    assert rule.check(token(), NOW, frozenset({"g-lab", "g-x"})).groups == {"g-lab", "g-x"}


def test_allow_listed_client_identity_is_a_service_account() -> None:
    robot = token(
        sub=ROBOT,
        username=f"{ROBOT}@clients.auth.globus.org",
        identity_set_detail=[],
        session_info=None,
    )
    rule = policy(allowed_domains=["anl.gov"], required_groups=["g"], service_clients=[ROBOT])
    p = rule.check(robot, NOW)
    assert p.kind == "service" and p.id == ROBOT
    with pytest.raises(PermissionDeniedError, match="client identity"):
        policy(service_clients=["someone-else"]).check(robot, NOW)
    # Without an allow-list a client identity meets the same rules as a person.
    with pytest.raises(PermissionDeniedError, match="allowed organization"):
        policy(allowed_domains=["anl.gov"]).check(robot, NOW)


def test_trim_keeps_what_the_policy_reads_and_no_personal_details() -> None:
    kept = trim({**token(), "policy_evaluations": {"p": {"evaluation": True, "x": 1}}})
    assert "name" not in kept and "email" not in kept
    assert kept["session_info"] == {"authentications": {ALICE: {}}}
    assert policy(allowed_domains=["anl.gov"], required_policies=["p"]).check(kept, NOW).id == ALICE
    assert trim({"active": False, "sub": "x"}) == {"active": False}


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def authenticate(self, token: str) -> Principal:
        return Principal(id=self.name, username=self.name)


def test_chain_sends_api_keys_and_globus_tokens_their_own_way() -> None:
    chain = ChainAuthenticator(_Named("keys"), _Named("globus"))
    assert chain.authenticate("sk-first-abc").id == "keys"
    assert chain.authenticate("AgXyz").id == "globus"
    with pytest.raises(AuthenticationError):
        ChainAuthenticator(_Named("keys")).authenticate("AgXyz")
