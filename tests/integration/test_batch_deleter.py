"""Done messages are deleted in batches: fewer calls, and none left behind on close."""

from chalicelib.services import Services
from chalicelib.stores.deleter import BatchDeleter
from tests.integration.conftest import Moto


def test_receipts_are_deleted_ten_per_call_and_flushed_on_close(
    services: Services, moto_server: Moto
) -> None:
    sqs = services.sqs
    url = sqs.create_queue(QueueName=f"{services.settings.resource('deleter-test')}")["QueueUrl"]
    for i in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    receipts = []
    while len(receipts) < 12:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
        receipts += [m["ReceiptHandle"] for m in out.get("Messages", [])]
    moto_server.reset()
    deleter = BatchDeleter(sqs, url, max_delay_s=60)
    for r in receipts:
        deleter.add(r)
    deleter.close()
    calls = moto_server.calls()["by_operation"]
    assert calls == {"sqs.DeleteMessageBatch": 2}
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
