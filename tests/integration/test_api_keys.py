"""API keys: stored hashed, malformed ones refused unread, answers remembered within bounds."""

import secrets

import pytest

from chalicelib.auth.apikeys import ApiKeyAuthenticator
from chalicelib.errors import AuthenticationError
from chalicelib.services import Services
from chalicelib.stores.keys import BASE62, KEY_PREFIX, hash_key, new_key, well_formed
from tests.aws_calls import CallCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reads(calls: CallCounter) -> int:
    return calls.by_operation.get("dynamodb.GetItem", 0)


def random_key() -> str:
    """What a guesser or a typo sends: the right prefix and length, any characters."""
    return KEY_PREFIX + "".join(secrets.choice(BASE62) for _ in range(38))


def test_key_is_stored_only_as_its_hash(services: Services) -> None:
    key = services.keys.create("alice")
    assert well_formed(key)
    table = services.dynamodb.Table(services.settings.keys_table_name)
    items = table.scan()["Items"]
    assert all(key not in str(item) for item in items)
    assert any(item["key_hash"] == hash_key(key) for item in items)


def test_warm_cache_makes_no_dynamodb_read(services: Services, aws_calls: CallCounter) -> None:
    key = services.keys.create("bob")
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=60)
    assert auth.authenticate(key).id == "bob"
    aws_calls.reset()
    assert auth.authenticate(key).username == "bob"
    assert aws_calls.total == 0


def test_unknown_and_revoked_keys_are_refused(services: Services) -> None:
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=0)
    with pytest.raises(AuthenticationError):
        auth.authenticate("sk-first-nope")
    with pytest.raises(AuthenticationError):
        auth.authenticate(new_key())
    key = services.keys.create("carol")
    services.keys.revoke(hash_key(key))
    with pytest.raises(AuthenticationError):
        auth.authenticate(key)


def test_five_thousand_random_keys_cost_no_dynamodb_read(
    services: Services, aws_calls: CallCounter
) -> None:
    auth = ApiKeyAuthenticator(services.keys)
    guesses = [random_key() for _ in range(4990)]
    # The format keys had before the checksum (sk-first- + token_urlsafe(32)) is refused too.
    guesses += [KEY_PREFIX + secrets.token_urlsafe(32) for _ in range(10)]
    aws_calls.reset()
    for guess in guesses:
        with pytest.raises(AuthenticationError, match="Incorrect API key"):
            auth.authenticate(guess)
    assert aws_calls.total == 0
    # Nor do they take any room in memory.
    assert len(auth.memo) == 0


def test_a_repeated_unknown_key_is_read_once_then_remembered_briefly(
    services: Services, aws_calls: CallCounter
) -> None:
    clock = Clock()
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=60, negative_ttl_s=5, clock=clock)
    unknown = new_key()  # passes the checksum, is in no table
    aws_calls.reset()
    for _ in range(100):
        with pytest.raises(AuthenticationError):
            auth.authenticate(unknown)
    assert reads(aws_calls) == 1
    clock.now += 5.1
    with pytest.raises(AuthenticationError):
        auth.authenticate(unknown)
    assert reads(aws_calls) == 2


def test_memory_stays_within_its_bounds_and_wrong_keys_do_not_evict_real_ones(
    services: Services, aws_calls: CallCounter
) -> None:
    auth = ApiKeyAuthenticator(services.keys, maxsize=8, negative_maxsize=4)
    real = [services.keys.create(f"user{i}") for i in range(12)]
    for key in real:
        auth.authenticate(key)
    for _ in range(50):
        with pytest.raises(AuthenticationError):
            auth.authenticate(new_key())
    assert auth.memo.counts() == (8, 4)
    aws_calls.reset()
    for key in real[-8:]:
        auth.authenticate(key)
    assert aws_calls.total == 0


def test_a_revoked_key_works_until_its_entry_expires_and_not_after(
    services: Services, aws_calls: CallCounter
) -> None:
    clock = Clock()
    auth = ApiKeyAuthenticator(services.keys, cache_ttl_s=60, clock=clock)
    key = services.keys.create("dave")
    assert auth.authenticate(key).id == "dave"
    services.keys.revoke(hash_key(key))
    clock.now += 59
    aws_calls.reset()
    assert auth.authenticate(key).id == "dave"
    assert aws_calls.total == 0
    clock.now += 1.1
    with pytest.raises(AuthenticationError):
        auth.authenticate(key)
    assert reads(aws_calls) == 1
