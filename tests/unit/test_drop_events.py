"""S3 event notifications for the drop folder: which objects start a batch, their keys decoded,
the identity that makes one batch per object version, the order of a key's versions (their
sequencers), and the principal an owner's batch runs as (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.auth import Principal
from chalicelib.auth.apikeys import user_principal
from chalicelib.batch.drop import SEQUENCE_WIDTH, drop_objects, parse_key, sequence_key


def record(
    key: str,
    *,
    event: str = "ObjectCreated:Put",
    version: str | None = None,
    etag: str = '"abc"',
    bucket: str = "drop",
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": 12, "eTag": etag, "sequencer": "0A1"}
    if version is not None:
        obj["versionId"] = version
    return {"eventName": event, "s3": {"bucket": {"name": bucket}, "object": obj}}


def event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def test_the_test_event_names_no_object() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "drop"}
    assert drop_objects(test_event) == []


def test_an_inbox_object_becomes_owner_and_name() -> None:
    (obj,) = drop_objects(event(record("inbox/alice/questions.jsonl")))
    assert (obj.bucket, obj.owner, obj.name, obj.etag, obj.size) == (
        "drop",
        "alice",
        "questions",
        "abc",
        12,
    )
    assert obj.outbox("status.json") == "outbox/alice/questions.status.json"


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("inbox/alice/my+questions.jsonl", "inbox/alice/my questions.jsonl"),  # AWS: space → +
        ("inbox%2Falice%2Fq.jsonl", "inbox/alice/q.jsonl"),  # moto: "/" percent-encoded
        ("inbox/alice/caf%C3%A9.jsonl", "inbox/alice/café.jsonl"),
    ],
)
def test_keys_are_unquoted_plus(encoded: str, key: str) -> None:
    (obj,) = drop_objects(event(record(encoded)))
    assert obj.key == key


@pytest.mark.parametrize(
    "key",
    [
        "outbox/alice/q.jsonl",
        "inbox/alice/q.txt",
        "inbox/q.jsonl",
        "inbox//q.jsonl",
        "inbox/alice/sub/q.jsonl",
        "inbox/alice/.jsonl",
    ],
)
def test_keys_outside_the_inbox_shape_are_ignored(key: str) -> None:
    assert parse_key(key) is None
    assert drop_objects(event(record(key))) == []


def test_only_object_created_events_count() -> None:
    removed = record("inbox/alice/q.jsonl", event="ObjectRemoved:Delete")
    kept = record("inbox/alice/r.jsonl", event="ObjectCreated:CompleteMultipartUpload")
    assert [o.name for o in drop_objects(event(removed, kept))] == ["r"]


def test_the_same_version_delivered_twice_has_one_identity() -> None:
    first = drop_objects(event(record("inbox/a/q.jsonl", version="v1", etag='"x"')))[0]
    again = drop_objects(event(record("inbox/a/q.jsonl", version="v1", etag='"x"')))[0]
    assert first.source == again.source


def test_a_new_version_has_a_new_identity_even_with_the_same_bytes() -> None:
    v1 = drop_objects(event(record("inbox/a/q.jsonl", version="v1", etag='"x"')))[0]
    v2 = drop_objects(event(record("inbox/a/q.jsonl", version="v2", etag='"x"')))[0]
    assert v1.source != v2.source


def test_unversioned_objects_are_identified_by_their_etag() -> None:
    same = [drop_objects(event(record("inbox/a/q.jsonl", etag='"x"')))[0] for _ in range(2)]
    changed = drop_objects(event(record("inbox/a/q.jsonl", etag='"y"')))[0]
    assert same[0].version_id is None and same[0].etag == "x"
    assert same[0].source == same[1].source != changed.source


def test_the_same_key_in_another_bucket_is_another_object() -> None:
    a = drop_objects(event(record("inbox/a/q.jsonl", bucket="one")))[0]
    b = drop_objects(event(record("inbox/a/q.jsonl", bucket="two")))[0]
    assert a.source != b.source


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
        ("FF", "0100"),  # shorter but smaller once padded: "FF" < "100" as numbers
        ("0A1", "0a2"),  # case does not matter
        ("9", "0055AED6DCD90281E5"),
    ],
)
def test_sequencers_compare_as_padded_hex_strings(older: str, newer: str) -> None:
    assert sequence_key(older) < sequence_key(newer)
    assert len(sequence_key(older)) == len(sequence_key(newer)) == SEQUENCE_WIDTH


@pytest.mark.parametrize("bad", ["", "  ", "not-hex", "1" * (SEQUENCE_WIDTH + 1)])
def test_a_missing_or_malformed_sequencer_is_unordered(bad: str) -> None:
    assert sequence_key(bad) == ""


def key(user: str, **fields: object) -> dict[str, object]:
    return {"user": user, "kind": "user", "active": True, **fields}


def test_an_owner_without_an_active_key_is_no_principal() -> None:
    assert user_principal("alice", []) is None
    assert user_principal("alice", [key("alice", active=False)]) is None
    assert user_principal("alice", [key("bob")]) is None


def test_an_owner_acts_as_its_key_does_on_rest() -> None:
    got = user_principal("alice", [key("alice", groups=["lab"], domain="uni.edu")])
    assert got == Principal(
        id="alice", username="alice", idp_domain="uni.edu", groups=frozenset({"lab"})
    )


def test_keys_that_disagree_grant_only_what_all_of_them_grant() -> None:
    got = user_principal(
        "alice",
        [
            key("alice", kind="service", groups=["lab", "ops"], domain="uni.edu"),
            key("alice", groups=["lab"], domain="other.edu"),
            key("alice", groups=["ops"], active=False),  # revoked: not counted
        ],
    )
    assert got == Principal(id="alice", username="alice", kind="user", groups=frozenset({"lab"}))
