"""The one reading of a conditional write that lost (every DynamoDB store uses it)."""

from botocore.exceptions import ClientError

from chalicelib.stores.dynamo import condition_failed, old_item


def test_a_lost_conditional_write_is_told_apart_and_its_old_item_read() -> None:
    lost = ClientError(
        {
            "Error": {"Code": "ConditionalCheckFailedException", "Message": "no"},
            "Item": {"status": {"S": "completed"}},
        },
        "PutItem",
    )
    assert condition_failed(lost) and old_item(lost) == {"status": {"S": "completed"}}
    throttled = ClientError({"Error": {"Code": "ThrottlingException"}}, "PutItem")
    assert not condition_failed(throttled) and old_item(throttled) == {}
