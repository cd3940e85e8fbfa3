"""API keys: stored hashed, looked up once per cache window, wrong keys refused."""

import pytest

from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.errors import AuthenticationError
from chalicelib.services import Services
from chalicelib.stores.keys import hash_key
from tests.integration.conftest import Moto


def test_key_is_stored_only_as_its_hash(services: Services) -> None:
    key = services.keys.create("alice")
    table = services.dynamodb.Table(services.settings.keys_table_name)
    items = table.scan()["Items"]
    assert all(key not in str(item) for item in items)
    assert any(item["key_hash"] == hash_key(key) for item in items)


def test_warm_cache_makes_no_dynamodb_read(services: Services, moto_server: Moto) -> None:
    key = services.keys.create("bob")
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=60)
    assert auth.authenticate(key).id == "bob"
    moto_server.reset()
    assert auth.authenticate(key).username == "bob"
    assert moto_server.calls()["total"] == 0


def test_unknown_and_revoked_keys_are_refused(services: Services) -> None:
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=0)
    with pytest.raises(AuthenticationError):
        auth.authenticate("sk-first-nope")
    key = services.keys.create("carol")
    services.keys.revoke(hash_key(key))
    with pytest.raises(AuthenticationError):
        auth.authenticate(key)
