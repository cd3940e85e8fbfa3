"""A principal as a DynamoDB map (batch and connection records): one writer, one reader, and the
maps the older copies wrote still read."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.auth import Principal

FULL = Principal(
    id="u-1",
    username="ada@lab.org",
    kind="service",
    idp_domain="lab.org",
    groups=frozenset({"b-group", "a-group"}),
)
BARE = Principal(id="u-2", username="bob")


@pytest.mark.parametrize("principal", [FULL, BARE], ids=["full", "bare"])
def test_a_principal_survives_a_round_trip_through_a_dynamodb_table(principal: Principal) -> None:
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
        table = dynamodb.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        table.put_item(Item={"k": "1", "principal": principal.to_item()})
        item = table.get_item(Key={"k": "1"})["Item"]
    assert Principal.from_item(item["principal"]) == principal


def test_the_map_holds_sorted_groups_and_no_null_domain() -> None:
    assert FULL.to_item()["groups"] == ["a-group", "b-group"]
    assert BARE.to_item() == {"id": "u-2", "username": "bob", "kind": "user", "groups": []}


@pytest.mark.parametrize(
    "old",
    [
        # The batch records' copy: idp_domain stored as NULL.
        {"id": "u-2", "username": "bob", "kind": "user", "idp_domain": None, "groups": []},
        # The drop folder's record of an unknown owner: no kind, no groups.
        {"id": "u-2", "username": "bob"},
        # A string set (what the resource layer gives back for a set of strings).
        {"id": "u-2", "username": "bob", "groups": set()},
    ],
    ids=["null-domain", "no-kind-no-groups", "string-set"],
)
def test_maps_written_by_the_older_code_still_read(old: dict[str, Any]) -> None:
    assert Principal.from_item(old) == BARE


def test_a_map_without_a_username_names_the_principal_by_its_id() -> None:
    principal = Principal.from_item({"id": "u-3", "groups": {"g"}, "idp_domain": "x.org"})
    assert principal == Principal(
        id="u-3", username="u-3", idp_domain="x.org", groups=frozenset({"g"})
    )
