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
