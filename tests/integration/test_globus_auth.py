"""Globus tokens through the real globus-sdk; only Globus Auth's HTTP answers are recorded.

The cache is the real DynamoDB table on the moto server, so "no Globus request" and "one
DynamoDB read" are counted, not assumed.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import globus_sdk
import pytest
import responses
from aws_lambda_powertools import Logger
from globus_sdk.testing import RegisteredResponse, load_response

from chalicelib.auth.cache import IntrospectionCache
from chalicelib.auth.chain import ChainAuthenticator
from chalicelib.auth.globus import QUICK_RETRY, GlobusAuthenticator
from chalicelib.auth.policy import AuthPolicy
from chalicelib.errors import AuthenticationError, PermissionDeniedError, UpstreamUnavailableError
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings
from chalicelib.stores.keys import hash_key
from chalicelib.streaming.service import StreamService
from tests.aws_calls import CallCounter

GATEWAY = "11111111-2222-3333-4444-555555555555"
ALICE = "aaaaaaaa-0000-0000-0000-000000000001"
ROBOT = "cccccccc-0000-0000-0000-000000000003"
# A group the recorded get_my_groups answer lists.
MEMBER_OF = "d3974728-6458-11e4-b72d-123139141556"
INTROSPECT = "/v2/oauth2/token/introspect"
EVE = {"id": ALICE, "username": "eve@example.com", "identity_provider": "idp-example"}


@pytest.fixture
def globus_http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def introspection(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    data: dict[str, Any] = {
        "active": True,
        "scope": f"https://auth.globus.org/scopes/{GATEWAY}/action_all",
        "client_id": "native-app",
        "sub": ALICE,
        "username": "alice@anl.gov",
        "name": "Alice",
        "email": "alice@anl.gov",
        "aud": [GATEWAY],
        "iss": "https://auth.globus.org",
        "exp": now + 3600,
        "iat": now - 10,
        "nbf": now - 10,
        "identity_set_detail": [
            {"id": ALICE, "username": "alice@anl.gov", "identity_provider": "idp", "name": "A"}
        ],
        "session_info": {"session_id": "s1", "authentications": {ALICE: {"idp": "idp"}}},
    }
    data.update(overrides)
    return data


def answer(mock: responses.RequestsMock, status: int = 200, **overrides: Any) -> None:
    load_response(
        RegisteredResponse(
            service="auth",
            path=INTROSPECT,
            method="POST",
            status=status,
            json=introspection(**overrides) if status == 200 else {"errors": [{"code": "x"}]},
        ),
        requests_mock=mock,
    )


def globus_calls(mock: responses.RequestsMock) -> int:
    return len(mock.calls)


def authenticator(services: Services, **rules: Any) -> GlobusAuthenticator:
    client = globus_sdk.ConfidentialAppAuthClient(GATEWAY, "secret", retry_config=QUICK_RETRY)
    cache = IntrospectionCache(services.dynamodb.Table(services.settings.auth_cache_table_name))
    return GlobusAuthenticator(client, cache, AuthPolicy.create(GATEWAY, **rules))


def token() -> str:
    return f"Ag{time.time_ns()}"


def test_valid_user_token_gives_the_principal(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http)
    t = token()
    p = authenticator(services, allowed_domains=["anl.gov"]).authenticate(t)
    assert (p.id, p.username, p.idp_domain, p.kind) == (ALICE, "alice@anl.gov", "anl.gov", "user")
    sent = urllib.parse.parse_qs(globus_http.calls[0].request.body)
    assert sent["token"] == [t]
    assert sent["include"] == ["session_info,identity_set_detail"]
    # Only the hash is kept, and no personal details beyond what the policy reads.
    items = services.dynamodb.Table(services.settings.auth_cache_table_name).scan()["Items"]
    assert any(i["token_hash"] == hash_key(t) for i in items)
    assert all(t not in str(i) and 'alice@anl.gov","name' not in str(i) for i in items)


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"exp": int(time.time()) - 5}, AuthenticationError, "expired"),
        ({"active": False}, AuthenticationError, "not active"),
        ({"aud": ["another-service"]}, AuthenticationError, "not issued for this gateway"),
        (
            {"username": "eve@example.com", "identity_set_detail": [EVE]},
            PermissionDeniedError,
            "allowed organization",
        ),
    ],
    ids=["expired", "inactive", "wrong-audience", "disallowed-domain"],
)
def test_tokens_policy_refuses(
    services: Services,
    globus_http: responses.RequestsMock,
    overrides: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    answer(globus_http, **overrides)
    with pytest.raises(error, match=words):
        authenticator(services, allowed_domains=["anl.gov"]).authenticate(token())


def test_group_membership_comes_from_a_dependent_token_and_the_groups_api(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http)
    load_response("auth.oauth2_get_dependent_tokens", case="groups", requests_mock=globus_http)
    load_response("groups.get_my_groups", requests_mock=globus_http)
    with pytest.raises(PermissionDeniedError, match="group"):
        authenticator(services, required_groups=["not-a-member"]).authenticate(token())
    p = authenticator(services, required_groups=[MEMBER_OF]).authenticate(token())
    assert MEMBER_OF in p.groups
    groups_call = next(c for c in globus_http.calls if "groups.api" in c.request.url)
    assert groups_call.request.headers["Authorization"] == "Bearer groupsToken"


def test_required_policy_not_satisfied_is_refused(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http, policy_evaluations={"pol-ha": {"evaluation": False}})
    with pytest.raises(PermissionDeniedError, match="pol-ha"):
        authenticator(services, required_policies=["pol-ha"]).authenticate(token())
    query = urllib.parse.urlparse(globus_http.calls[0].request.url).query
    assert urllib.parse.parse_qs(query)["authentication_policies"] == ["pol-ha"]


def test_allow_listed_service_account_is_let_in(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(
        globus_http,
        sub=ROBOT,
        username=f"{ROBOT}@clients.auth.globus.org",
        identity_set_detail=[],
        session_info=None,
    )
    auth = authenticator(services, allowed_domains=["anl.gov"], service_clients=[ROBOT])
    p = auth.authenticate(token())
    assert (p.id, p.kind) == (ROBOT, "service")


def test_second_call_makes_no_globus_request_and_another_process_one_dynamodb_read(
    services: Services, globus_http: responses.RequestsMock, aws_calls: CallCounter
) -> None:
    answer(globus_http)
    t = token()
    first = authenticator(services)
    first.authenticate(t)
    assert globus_calls(globus_http) == 1
    aws_calls.reset()
    assert first.authenticate(t).id == ALICE
    assert aws_calls.total == 0
    # A new process (another Lambda container) shares the DynamoDB cache.
    assert authenticator(services).authenticate(t).id == ALICE
    assert aws_calls.by_operation == {"dynamodb.GetItem": 1}
    assert globus_calls(globus_http) == 1


def test_an_inactive_token_is_remembered_briefly(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http, active=False)
    t = token()
    for auth in (authenticator(services), authenticator(services)):
        with pytest.raises(AuthenticationError):
            auth.authenticate(t)
    assert globus_calls(globus_http) == 1


def test_globus_outage_is_503_and_not_cached(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http, status=500)
    t = token()
    auth = authenticator(services)
    with pytest.raises(UpstreamUnavailableError):
        auth.authenticate(t)
    before = globus_calls(globus_http)
    with pytest.raises(UpstreamUnavailableError):
        auth.authenticate(t)
    assert globus_calls(globus_http) > before


def test_a_newly_required_policy_is_asked_of_globus_not_refused_from_the_cache(
    services: Services, globus_http: responses.RequestsMock
) -> None:
    answer(globus_http)
    answer(globus_http, policy_evaluations={"pol-new": {"evaluation": True}})
    t = token()
    authenticator(services).authenticate(t)
    assert authenticator(services, required_policies=["pol-new"]).authenticate(t).id == ALICE
    assert globus_calls(globus_http) == 2


def test_settings_switch_globus_on_beside_api_keys(
    stage: str, globus_http: responses.RequestsMock
) -> None:
    from chalicelib.settings import REPO_ROOT, Settings

    registry = str(REPO_ROOT / "infra" / "deployments" / "local.json")
    on = Services(
        Settings(
            stage=stage,
            registry_path=registry,
            globus_client_id=GATEWAY,
            globus_client_secret="secret",  # type: ignore[arg-type]
            globus_allowed_domains="anl.gov",  # type: ignore[arg-type]
        )
    )
    answer(globus_http)
    assert on.authenticator.authenticate(token()).idp_domain == "anl.gov"
    key = on.keys.create("svc", kind="service", groups=["g"], domain="example.org")
    p = on.authenticator.authenticate(key)
    assert (p.id, p.kind, p.groups, p.idp_domain) == ("svc", "service", {"g"}, "example.org")
    assert globus_calls(globus_http) == 1
    off = Services(Settings(stage=stage, registry_path=registry))
    with pytest.raises(AuthenticationError):
        off.authenticator.authenticate(token())


def test_process_memory_is_bounded_and_bad_tokens_do_not_evict_good_ones(
    services: Services, globus_http: responses.RequestsMock, aws_calls: CallCounter
) -> None:
    client = globus_sdk.ConfidentialAppAuthClient(GATEWAY, "secret", retry_config=QUICK_RETRY)
    cache = IntrospectionCache(services.dynamodb.Table(services.settings.auth_cache_table_name))
    auth = GlobusAuthenticator(client, cache, AuthPolicy.create(GATEWAY), local_maxsize=4)
    answer(globus_http)
    good = token()
    auth.authenticate(good)
    globus_http.replace(
        responses.POST, f"https://auth.globus.org{INTROSPECT}", json={"active": False}
    )
    for _ in range(12):
        with pytest.raises(AuthenticationError):
            auth.authenticate(token())
    assert auth.memo.counts() == (1, 4)
    aws_calls.reset()
    before = globus_calls(globus_http)
    assert auth.authenticate(good).id == ALICE
    assert aws_calls.total == 0
    assert globus_calls(globus_http) == before


class ClosingPoster:
    """The WebSocket management API: the frames posted, and the connections closed."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: list[str] = []

    def post(self, connection_id: str, text: str) -> None:
        self.frames.append(json.loads(text))

    def close(self, connection_id: str) -> None:
        self.closed.append(connection_id)


def test_a_globus_token_gone_inactive_is_refused_on_its_open_websocket_connection(
    stage: str, globus_http: responses.RequestsMock
) -> None:
    # $connect stored the identity and every later message trusted it for the connection's
    # life; now each message goes through the same Globus authenticator (and caches) as REST.
    answer(globus_http)  # at $connect
    answer(globus_http, active=False)  # revoked at Globus since
    now = [time.time()]
    api = Services(
        Settings(
            stage=stage,
            stream_key="globus-ws-stream-key",
            registry_path=str(REPO_ROOT / "infra" / "deployments" / "local.json"),
        )
    )
    client = globus_sdk.ConfidentialAppAuthClient(GATEWAY, "secret", retry_config=QUICK_RETRY)
    cache = IntrospectionCache(api.dynamodb.Table(api.settings.auth_cache_table_name))
    globus = GlobusAuthenticator(client, cache, AuthPolicy.create(GATEWAY), clock=lambda: now[0])
    poster = ClosingPoster()
    service = StreamService(
        settings=api.settings,
        authenticator=ChainAuthenticator(api.api_key_authenticator, globus),
        connections=api.connections,
        poster=poster,  # type: ignore[arg-type]
        gateway=api.gateway,
        registry=api.registry,
        logger=Logger(service="test"),
    )
    t = token()
    assert service.connect("conn-g", {"headers": {"Authorization": f"Bearer {t}"}}) == {
        "statusCode": 200
    }
    body = {"model": "no/such-model", "messages": [{"role": "user", "content": "hi"}]}
    message = json.dumps({"action": "chat.completions", "id": "m", "body": body})
    assert service.message("conn-g", message) is None
    assert poster.frames[-1]["status"] == 404  # authenticated (from the caches), then refused
    now[0] += 601  # past the shared cache's 600 s and this process's 60 s: Globus is asked
    assert service.message("conn-g", message) is None
    assert (poster.frames[-1]["status"], poster.frames[-1]["id"]) == (401, "m")
    assert "not active" in poster.frames[-1]["error"]["message"]
    assert poster.closed == ["conn-g"] and globus_calls(globus_http) == 2
