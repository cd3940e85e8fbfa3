"""Who is calling: every authenticator turns a bearer token into a ``Principal``."""

from chalicelib.auth.principal import Authenticator, Principal, api_key_token, bearer_token

__all__ = ["Authenticator", "Principal", "api_key_token", "bearer_token"]
