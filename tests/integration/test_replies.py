"""Completion notices reach the waiting process through its reply queue."""

import threading

from chalicelib.services import Services
from chalicelib.stores.replies import ReplyListener, ReplySender


def test_notice_wakes_the_waiter_and_unknown_ids_time_out(services: Services) -> None:
    listener = ReplyListener(
        services.sqs, f"{services.settings.reply_queue_name_prefix}-t1", wait_s=1
    )
    try:
        listener.expect("req_a")
        listener.expect("req_b")
        url = listener.url
        threading.Timer(
            0.2,
            ReplySender(services.sqs).send,
            (url, {"request_id": "req_a", "status": "completed"}),
        ).start()
        assert listener.wait("req_a", 5) == {"request_id": "req_a", "status": "completed"}
        assert listener.wait("req_b", 0.3) is None
    finally:
        listener.close(delete_queue=True)


def test_sending_to_a_deleted_reply_queue_is_not_an_error(services: Services) -> None:
    listener = ReplyListener(
        services.sqs, f"{services.settings.reply_queue_name_prefix}-t2", wait_s=1
    )
    url = listener.url
    listener.close(delete_queue=True)
    assert ReplySender(services.sqs).send(url, {"request_id": "x"}) is False
