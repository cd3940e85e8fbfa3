"""The API key format: a checksum catches any one wrong character before a table read."""

import secrets

import pytest

from chalicelib.stores.keys import BASE62, KEY_PREFIX, checksum, new_key, well_formed


def test_new_keys_are_well_formed_and_distinct() -> None:
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) == len(KEY_PREFIX) + 38
        assert set(key.removeprefix(KEY_PREFIX)) <= set(BASE62)
        assert well_formed(key)


def test_every_single_character_change_is_caught() -> None:
    key = new_key()
    start = len(KEY_PREFIX)
    for i in range(start, len(key)):
        for c in BASE62:
            if c != key[i]:
                assert not well_formed(key[:i] + c + key[i + 1 :]), (i, c)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "sk-first-",
        "sk-first-nope",
        KEY_PREFIX + secrets.token_urlsafe(32),  # the format before checksums
        "sk-other-" + "a" * 38,
        " " + new_key(),
        new_key() + "\n",
        new_key()[:-1],
        new_key() + "0",
    ],
    ids=["empty", "prefix", "short", "legacy", "prefix-wrong", "space", "newline", "cut", "long"],
)
def test_malformed_keys_are_refused(key: str) -> None:
    assert not well_formed(key)


def test_checksum_is_six_base62_characters_of_crc32() -> None:
    assert checksum("") == "000000"
    assert len(checksum("z" * 32)) == 6
    assert well_formed(KEY_PREFIX + "a" * 32 + checksum("a" * 32))
