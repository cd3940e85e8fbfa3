"""``first login`` / ``first token`` / ``first logout``: a scientist's Globus tokens for FIRST.

``first login`` runs the Globus native-app flow (open a URL, sign in with your institution, paste
the code back) and keeps the tokens, refresh token included, in
``$XDG_CONFIG_HOME/first/tokens.json`` (``~/.config/first``), readable only by you (0600).
``first token`` prints a valid access token, refreshing it first when it is about to expire, so
any OpenAI client works with ``OPENAI_API_KEY=$(first token)``. ``first logout`` revokes the
tokens at Globus and deletes them here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import globus_sdk
from globus_sdk.token_storage import JSONTokenStorage, TokenStorageData

from chalicelib.errors import FirstError

NAMESPACE = "first"
# Refresh a token this long before it expires, so the caller's request does not race it.
REFRESH_MARGIN_S = 300


class NotLoggedInError(FirstError):
    pass


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "first"


class UserTokens:
    """The tokens of the gateway's scope, kept in a JSON token storage (mode 0600)."""

    def __init__(
        self,
        client: globus_sdk.NativeAppAuthClient,
        scope: str,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._scope = scope
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._storage = JSONTokenStorage(path, namespace=NAMESPACE)

    def login(
        self, prompt: Callable[[str], str] = input, show: Callable[[str], None] = print
    ) -> None:
        self._client.oauth2_start_flow(requested_scopes=self._scope, refresh_tokens=True)
        show(f"Sign in with your institution at:\n\n  {self._client.oauth2_get_authorize_url()}\n")
        code = prompt("Then paste the authorization code here: ").strip()
        response = self._client.oauth2_exchange_code_for_tokens(code)
        self._storage.store_token_response(response)
        self._protect()

    def token(self) -> str:
        """A valid access token for the gateway, refreshed when close to expiry."""
        data = self._data()
        if data.expires_at_seconds - REFRESH_MARGIN_S > self._clock():
            return data.access_token
        if not data.refresh_token:
            raise NotLoggedInError("The stored token has expired; run `first login` again.")
        try:
            response = self._client.oauth2_refresh_token(data.refresh_token)
        except globus_sdk.GlobusAPIError as exc:
            raise NotLoggedInError(
                "Globus refused the refresh token; run `first login` again."
            ) from exc
        by_rs = response.by_resource_server
        fresh = by_rs.get(data.resource_server) or next(iter(by_rs.values()))
        self._store(
            TokenStorageData(
                resource_server=data.resource_server,
                identity_id=data.identity_id,
                scope=fresh.get("scope", data.scope),
                access_token=fresh["access_token"],
                # Globus may rotate the refresh token; keep the old one when it does not.
                refresh_token=fresh.get("refresh_token") or data.refresh_token,
                expires_at_seconds=int(fresh["expires_at_seconds"]),
                token_type=fresh.get("token_type"),
            )
        )
        return str(fresh["access_token"])

    def logout(self) -> None:
        for data in self._storage.get_token_data_by_resource_server().values():
            for token in (data.access_token, data.refresh_token):
                # Deleting the local copy is what matters most; revoking is a courtesy.
                if token:
                    with contextlib.suppress(globus_sdk.GlobusAPIError, globus_sdk.NetworkError):
                        self._client.oauth2_revoke_token(token)
            self._storage.remove_token_data(data.resource_server)
        self.path.unlink(missing_ok=True)

    def _data(self) -> TokenStorageData:
        if self.path.exists():
            for data in self._storage.get_token_data_by_resource_server().values():
                if self._scope in data.scope.split():
                    return data
        raise NotLoggedInError("Not logged in to FIRST; run `first login` first.")

    def _store(self, data: TokenStorageData) -> None:
        self._storage.store_token_data_by_resource_server({data.resource_server: data})
        self._protect()

    def _protect(self) -> None:
        # The storage creates the file 0600; one that existed before keeps its mode otherwise.
        os.chmod(self.path, 0o600)


def user_tokens(client_id: str | None, scope: str | None) -> UserTokens:
    if not client_id:
        raise NotLoggedInError(
            "Set FIRST_GLOBUS_NATIVE_CLIENT_ID (the gateway's Globus native app client id)."
        )
    if not scope:
        raise NotLoggedInError("Set FIRST_GLOBUS_SCOPE (the gateway's Globus scope).")
    client = globus_sdk.NativeAppAuthClient(client_id, app_name="first-cli")
    return UserTokens(client, scope, config_dir() / "tokens.json")
