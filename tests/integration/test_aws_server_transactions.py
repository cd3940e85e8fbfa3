"""The embedded AWS endpoint rolls a failed transaction back from the items it addressed, not a
copy of its tables (offline/moto_transactions.py): all or nothing, as DynamoDB promises."""

from __future__ import annotations

import gc
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models.table import Table

from tests.integration.conftest import Moto

Ddb = Any


def s(value: str) -> dict[str, str]:
    return {"S": value}


@pytest.fixture
def ddb(moto_server: Moto) -> Ddb:
    return boto3.client("dynamodb")


@pytest.fixture
def tables(ddb: Ddb) -> tuple[str, str]:
    """A hash-only table with a GSI on ``g``, and a hash+range table, each with two items."""
    suffix = uuid.uuid4().hex[:8]
    flat, ranged = f"tx-flat-{suffix}", f"tx-ranged-{suffix}"
    ddb.create_table(
        TableName=flat,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "g", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.create_table(
        TableName=ranged,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for key in ("a", "b"):
        ddb.put_item(
            TableName=flat,
            Item={"pk": s(key), "g": s("old"), "n": {"N": "1"}, "l": {"L": [s("x")]}},
        )
        ddb.put_item(TableName=ranged, Item={"pk": s("h"), "sk": s(key), "v": s("old")})
    return flat, ranged


def changes(flat: str, ranged: str) -> list[dict[str, Any]]:
    """Update an item in place, delete one, put one new, in each table (and a new hash key)."""
    return [
        {
            "Update": {
                "TableName": flat,
                "Key": {"pk": s("a")},
                "UpdateExpression": "SET g = :new, l = list_append(l, :more) ADD n :one",
                "ExpressionAttributeValues": {
                    ":new": s("new"),
                    ":more": {"L": [s("y")]},
                    ":one": {"N": "1"},
                },
            }
        },
        {"Delete": {"TableName": flat, "Key": {"pk": s("b")}}},
        {"Put": {"TableName": flat, "Item": {"pk": s("c"), "g": s("new")}}},
        {
            "Update": {
                "TableName": ranged,
                "Key": {"pk": s("h"), "sk": s("a")},
                "UpdateExpression": "SET v = :new",
                "ExpressionAttributeValues": {":new": s("new")},
            }
        },
        {"Delete": {"TableName": ranged, "Key": {"pk": s("h"), "sk": s("b")}}},
        {"Put": {"TableName": ranged, "Item": {"pk": s("h"), "sk": s("c"), "v": s("new")}}},
        {"Put": {"TableName": ranged, "Item": {"pk": s("h2"), "sk": s("a"), "v": s("new")}}},
    ]


def state(ddb: Ddb, flat: str, ranged: str) -> dict[str, Any]:
    def scan(table: str) -> list[dict[str, Any]]:
        items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
        return sorted(items, key=lambda i: (i["pk"]["S"], i.get("sk", s(""))["S"]))

    return {
        "flat": scan(flat),
        "ranged": scan(ranged),
        "by-g": sorted(
            i["pk"]["S"]
            for g in ("old", "new")
            for i in ddb.query(
                TableName=flat,
                IndexName="by-g",
                KeyConditionExpression="g = :g",
                ExpressionAttributeValues={":g": s(g)},
            )["Items"]
        ),
        "counts": [ddb.describe_table(TableName=t)["Table"]["ItemCount"] for t in (flat, ranged)],
    }


def served_table(name: str) -> Table:
    """The one ``Table`` object moto holds under ``name`` (the server runs in this process)."""
    gc.collect()
    # type(), not isinstance(): see tests/integration/test_aws_server_memory.py ``live``.
    [table] = [o for o in gc.get_objects() if type(o) is Table and o.name == name]
    return table


def test_a_transaction_failing_its_last_condition_changes_nothing(
    ddb: Ddb, tables: tuple[str, str]
) -> None:
    flat, ranged = tables
    before = state(ddb, flat, ranged)
    refused = {
        "ConditionCheck": {
            "TableName": flat,
            "Key": {"pk": s("missing")},
            "ConditionExpression": "attribute_exists(pk)",
        }
    }
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[*changes(flat, ranged), refused])
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in caught.value.response["CancellationReasons"]]
    assert reasons == ["None"] * 7 + ["ConditionalCheckFailed"]
    assert state(ddb, flat, ranged) == before
    # Reads of absent keys leave no empty hash entry behind in the hash+range table.
    assert all(served_table(ranged).items.values())


def test_a_transaction_rejected_by_validation_changes_nothing(
    ddb: Ddb, tables: tuple[str, str]
) -> None:
    flat, ranged = tables
    before = state(ddb, flat, ranged)
    # No range key: moto refuses it once the changes before it are applied; its key cannot be
    # snapshotted, so the hash+range table comes back from a whole copy, as moto itself does.
    malformed = {"Put": {"TableName": ranged, "Item": {"pk": s("h3"), "v": s("new")}}}
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=[*changes(flat, ranged), malformed])
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert state(ddb, flat, ranged) == before


def test_a_transaction_that_passes_applies_every_change_and_copies_no_table(
    ddb: Ddb, tables: tuple[str, str]
) -> None:
    flat, ranged = tables
    served = served_table(flat), served_table(ranged)
    ddb.transact_write_items(TransactItems=changes(flat, ranged))
    after = state(ddb, flat, ranged)
    assert after["flat"] == [
        {"pk": s("a"), "g": s("new"), "n": {"N": "2"}, "l": {"L": [s("x"), s("y")]}},
        {"pk": s("c"), "g": s("new")},
    ]
    assert after["ranged"] == [
        {"pk": s("h"), "sk": s("a"), "v": s("new")},
        {"pk": s("h"), "sk": s("c"), "v": s("new")},
        {"pk": s("h2"), "sk": s("a"), "v": s("new")},
    ]
    assert after["by-g"] == ["a", "c"]
    assert after["counts"] == [2, 3]
    # A refused one afterwards: still the same table objects, and no copy of them alive.
    with pytest.raises(ClientError):
        ddb.transact_write_items(
            TransactItems=changes(flat, ranged)[:1]
            + [
                {
                    "ConditionCheck": {
                        "TableName": ranged,
                        "Key": {"pk": s("h"), "sk": s("b")},
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                }
            ]
        )
    assert served_table(flat) is served[0] and served_table(ranged) is served[1]
    assert state(ddb, flat, ranged) == after
