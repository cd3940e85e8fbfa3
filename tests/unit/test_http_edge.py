"""The HTTP edge: per-thread current request, and the Prefer: wait header."""

import threading

from chalicelib.http import ThreadSafeChalice, preferred_wait_s


def test_each_thread_sees_its_own_current_request() -> None:
    app = ThreadSafeChalice(app_name="t")
    seen: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def serve(name: str) -> None:
        app.current_request = name  # type: ignore[assignment]
        barrier.wait()  # both threads have set theirs before either reads
        seen[name] = app.current_request

    threads = [threading.Thread(target=serve, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}
    assert app.current_request is None  # this thread never set one


def test_prefer_wait_is_read_case_insensitively_among_other_preferences() -> None:
    assert preferred_wait_s({"Prefer": "wait=5"}) == 5.0
    assert preferred_wait_s({"prefer": "respond-async, wait=0.5"}) == 0.5
    assert preferred_wait_s({"Prefer": "handling=lenient"}) is None
    assert preferred_wait_s({}) is None


def test_a_store_error_reaches_the_client_as_a_plain_500_without_internal_names() -> None:
    from chalice.test import Client

    from chalicelib.http import openai_route
    from chalicelib.logs import get_logger
    from chalicelib.stores.blobs import BlobNotFoundError

    app = ThreadSafeChalice(app_name="t")
    route = openai_route(get_logger("t"), lambda: app.current_request)

    @app.route("/boom")
    @route
    def boom(log: dict[str, object]) -> None:
        raise BlobNotFoundError("s3://first-prod-data/requests/req_1/result.json does not exist")

    with Client(app) as client:
        response = client.http.get("/boom")
    assert response.status_code == 500
    error = response.json_body["error"]
    assert error["type"] == "server_error" and "s3://" not in error["message"]
    assert "first-prod-data" not in response.body.decode()
