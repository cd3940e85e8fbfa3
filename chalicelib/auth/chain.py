"""One authenticator for the API: API keys by their prefix, everything else to Globus Auth."""

from __future__ import annotations

from chalicelib.auth.principal import Authenticator, Principal
from chalicelib.errors import AuthenticationError
from chalicelib.stores.keys import KEY_PREFIX


class ChainAuthenticator:
    """``sk-first-…`` → API keys; other bearer tokens → Globus when configured, else 401."""

    def __init__(self, api_keys: Authenticator, globus: Authenticator | None = None) -> None:
        self._api_keys = api_keys
        self._globus = globus

    def authenticate(self, token: str) -> Principal:
        if token.startswith(KEY_PREFIX):
            return self._api_keys.authenticate(token)
        if self._globus is None:
            raise AuthenticationError("Incorrect API key provided.")
        return self._globus.authenticate(token)
