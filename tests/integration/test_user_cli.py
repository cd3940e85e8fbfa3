"""``first login`` / ``first token`` / ``first logout`` with the real globus-sdk; Globus Auth's
HTTP answers are recorded."""

from __future__ import annotations

import json
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse, load_response
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

from first_cli.main import main
from first_cli.user import NAMESPACE, UserTokens, config_dir

GATEWAY = "11111111-2222-3333-4444-555555555555"
SCOPE = f"https://auth.globus.org/scopes/{GATEWAY}/action_all"
NATIVE = "99999999-8888-7777-6666-555555555555"


@pytest.fixture
def globus_http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("FIRST_GLOBUS_NATIVE_CLIENT_ID", NATIVE)
    monkeypatch.setenv("FIRST_GLOBUS_SCOPE", SCOPE)
    return tmp_path / "first" / "tokens.json"


def stored(path: Path, access: str, expires_at: int, refresh: str | None = "rt-1") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    JSONTokenStorage(path, namespace=NAMESPACE).store_token_data_by_resource_server(
        {
            GATEWAY: TokenStorageData(
                resource_server=GATEWAY,
                identity_id="alice-id",
                scope=SCOPE,
                access_token=access,
                refresh_token=refresh,
                expires_at_seconds=expires_at,
                token_type="Bearer",
            )
        }
    )


def token_grant(access: str, refresh: str | None = None) -> RegisteredResponse:
    body = {
        "access_token": access,
        "scope": SCOPE,
        "expires_in": 172800,
        "token_type": "Bearer",
        "resource_server": GATEWAY,
        "state": "_default",
        "other_tokens": [],
    }
    if refresh:
        body["refresh_token"] = refresh
    return RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", json=body)


def test_config_dir_honours_xdg() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x"}) == Path("/x/first")
    assert config_dir({"HOME": "/home/a"}) == Path("/home/a/.config/first")


def test_token_prints_a_valid_stored_token_without_asking_globus(
    home: Path, globus_http: responses.RequestsMock, capsys: pytest.CaptureFixture[str]
) -> None:
    stored(home, "still-good", int(time.time()) + 3600)
    assert main(["token"]) == 0
    assert capsys.readouterr().out.strip() == "still-good"
    assert len(globus_http.calls) == 0


def test_token_refreshes_an_expiring_token_and_keeps_it_private(
    home: Path, globus_http: responses.RequestsMock, capsys: pytest.CaptureFixture[str]
) -> None:
    stored(home, "old", int(time.time()) + 30)
    home.chmod(0o644)  # even a file that was readable by others ends up 0600
    load_response(token_grant("fresh"), requests_mock=globus_http)
    assert main(["token"]) == 0
    assert capsys.readouterr().out.strip() == "fresh"
    sent = urllib.parse.parse_qs(globus_http.calls[0].request.body)
    assert sent["grant_type"] == ["refresh_token"] and sent["refresh_token"] == ["rt-1"]
    assert stat.S_IMODE(home.stat().st_mode) == 0o600
    data = json.loads(home.read_text())["data"][NAMESPACE][GATEWAY]
    # Globus did not rotate the refresh token: the old one is kept for next time.
    assert data["access_token"] == "fresh" and data["refresh_token"] == "rt-1"


def test_token_without_login_says_what_to_do(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token"]) == 1
    assert "first login" in capsys.readouterr().err


def test_login_stores_tokens_0600_and_logout_revokes_and_forgets(
    home: Path, globus_http: responses.RequestsMock
) -> None:
    load_response(token_grant("new-access", refresh="new-refresh"), requests_mock=globus_http)
    shown: list[str] = []
    tokens = UserTokens(globus_sdk.NativeAppAuthClient(NATIVE), SCOPE, home)
    tokens.login(prompt=lambda _: "the-code", show=shown.append)
    assert "auth.globus.org/v2/oauth2/authorize" in shown[0]
    assert "access_type=offline" in shown[0]  # refresh tokens requested
    assert stat.S_IMODE(home.stat().st_mode) == 0o600
    assert tokens.token() == "new-access"

    load_response("auth.oauth2_revoke_token", requests_mock=globus_http)
    assert main(["logout"]) == 0
    assert not home.exists()
    revoked = [c for c in globus_http.calls if c.request.url.endswith("/token/revoke")]
    assert len(revoked) == 2
