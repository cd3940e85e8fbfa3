"""The test helper that evaluates IAM policies: it must refuse what a policy does not grant."""

import json
from typing import Any

import pytest

from chalicelib.settings import REPO_ROOT
from tests.iam import allows, iam_action, resources

QUEUE = "arn:aws:sqs:us-east-1:123456789012:first-prod-reply-host-1"
POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "SQS:DeleteQueue"],
            "Resource": "arn:aws:sqs:*:*:first-prod-reply-*",
        },
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/requests/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/requests/secret"},
    ],
}


def test_batch_operations_are_authorised_as_their_single_action() -> None:
    assert iam_action("sqs", "DeleteMessageBatch") == "sqs:DeleteMessage"
    assert iam_action("sqs", "ChangeMessageVisibilityBatch") == "sqs:ChangeMessageVisibility"
    assert iam_action("sqs", "SendMessageBatch") == "sqs:SendMessage"
    assert iam_action("dynamodb", "Query") == "dynamodb:Query"


def test_listed_actions_on_matching_resources_are_allowed() -> None:
    assert allows(POLICY, "sqs:ReceiveMessage", QUEUE)
    assert allows(POLICY, "sqs:DeleteQueue", QUEUE)  # actions match case-insensitively
    assert allows(POLICY, "s3:GetObject", "arn:aws:s3:::b/requests/r1/payload.json")


def test_what_no_statement_grants_is_refused() -> None:
    assert not allows(POLICY, "sqs:DeleteMessage", QUEUE)
    assert not allows(POLICY, "sqs:ReceiveMessage", QUEUE.replace("prod", "dev"))
    assert not allows(POLICY, "s3:PutObject", "arn:aws:s3:::b/requests/r1/payload.json")
    assert not allows(POLICY, "s3:GetObject", "arn:aws:s3:::b/registry/prod.json")


def test_deny_wins() -> None:
    assert not allows(POLICY, "s3:GetObject", "arn:aws:s3:::b/requests/secret")


def test_conditions_are_not_silently_ignored() -> None:
    condition = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    policy = {
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition}]
    }
    with pytest.raises(ValueError, match="IpAddress"):
        allows(policy, "sqs:SendMessage", QUEUE)


def test_string_conditions_need_their_key_in_the_request() -> None:
    via = {"StringLike": {"kms:ViaService": ["ssm.*.amazonaws.com"]}}
    policy = {
        "Statement": [
            {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*", "Condition": via}
        ]
    }
    key = "arn:aws:kms:us-east-1:1:key/k"
    assert allows(policy, "kms:Decrypt", key, {"kms:ViaService": "ssm.us-east-1.amazonaws.com"})
    assert not allows(policy, "kms:Decrypt", key, {"kms:ViaService": "s3.us-east-1.amazonaws.com"})
    assert not allows(policy, "kms:Decrypt", key)  # called directly, not through SSM


def test_resources_named_by_a_call() -> None:
    url = "http://127.0.0.1:4566/123456789012/first-x-interactive"
    assert resources("sqs", "us-east-1", {"QueueUrl": url}) == [
        "arn:aws:sqs:us-east-1:123456789012:first-x-interactive"
    ]
    assert resources("dynamodb", "eu-west-1", {"TableName": "t", "IndexName": "i"}) == [
        "arn:aws:dynamodb:eu-west-1:123456789012:table/t/index/i"
    ]
    assert resources("s3", "us-east-1", {"Bucket": "b", "Key": "k/1"}) == ["arn:aws:s3:::b/k/1"]


def test_management_api_calls_name_the_connection_on_the_websocket_api_s_stage() -> None:
    """The ARN AWS checks ``execute-api:ManageConnections`` against: the API id and stage of the
    client's endpoint, the HTTP method of the operation, the connection."""
    url = "https://abc123.execute-api.us-east-1.amazonaws.com/api/@connections/Xy%3D"
    request = {"url": url, "method": "POST"}
    (arn,) = resources("apigatewaymanagementapi", "us-east-1", {}, request)
    assert arn == "arn:aws:execute-api:us-east-1:123456789012:abc123/api/POST/@connections/Xy="
    assert iam_action("apigatewaymanagementapi", "PostToConnection") == (
        "execute-api:ManageConnections"
    )
    policy = json.loads((REPO_ROOT / ".chalice" / "policy-prod.json").read_text())
    assert allows(policy, "execute-api:ManageConnections", arn)
    # The API posts, and closes a connection whose credentials it refuses (a revoked key);
    # describing a client's connection is not granted.
    assert allows(policy, "execute-api:ManageConnections", arn.replace("/POST/", "/DELETE/"))
    assert not allows(policy, "execute-api:ManageConnections", arn.replace("/POST/", "/GET/"))
