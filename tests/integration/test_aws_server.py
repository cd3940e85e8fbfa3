"""The embedded AWS endpoint keeps DynamoDB's promises: a conditional write is atomic."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.integration.conftest import Moto

THREADS = 24
LIMIT = 5
ROUNDS = 15


def test_concurrent_conditional_adds_never_pass_the_limit(moto_server: Moto) -> None:
    ddb = boto3.client("dynamodb", config=Config(max_pool_connections=THREADS))
    table = f"atomic-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def add(key: str) -> bool:
        try:
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": key}},
                UpdateExpression="ADD n :one",
                ConditionExpression="attribute_not_exists(n) OR n < :limit",
                ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": str(LIMIT)}},
            )
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
            return False
        return True

    # The server runs in this process: switching threads every microsecond interleaves its
    # request threads as much as two cores would, so a missing lock shows in every run.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        admitted_by_round = run_rounds(add)
    finally:
        sys.setswitchinterval(interval)
    assert admitted_by_round == [LIMIT] * ROUNDS
    for round_ in range(ROUNDS):
        stored = ddb.get_item(TableName=table, Key={"pk": {"S": f"k{round_}"}}, ConsistentRead=True)
        assert stored["Item"]["n"]["N"] == str(LIMIT)


def run_rounds(add: Callable[[str], bool]) -> list[int]:
    with ThreadPoolExecutor(THREADS) as pool:
        return [sum(pool.map(add, [f"k{r}"] * THREADS * 2)) for r in range(ROUNDS)]
