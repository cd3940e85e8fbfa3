"""The poller against moto: record before notice, a lease kept by heartbeat, lost tasks re-run.

The compute side is an injected executor (the seam the poller already has); everything else is
the real poller, stores and queues on the moto server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from chalicelib import affinity, router
from chalicelib.auth import Principal
from chalicelib.compute.errors import TaskLostError
from chalicelib.errors import FirstError
from chalicelib.logs import get_logger
from chalicelib.poller.worker import Poller
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from chalicelib.streaming.notifier import StreamNotifier
from tests.integration.pollers import forget_endpoints, poller_services, pollers

MODEL = "first/tiny-chat"
USER = Principal(id="alice", username="alice", kind="user")


def response(request_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedExecutor:
    """Runs each task through ``behave(task, attempt)`` on a thread, as an endpoint would."""

    def __init__(self, behave: Callable[[dict[str, Any], int], Any]) -> None:
        self.behave = behave
        self.attempts: dict[str, int] = {}

    def submit_to_registered_function(
        self, function_id: str, args: Any = (), kwargs: Any = None
    ) -> Future[Any]:
        task = args[0]
        n = self.attempts[task["request_id"]] = self.attempts.get(task["request_id"], 0) + 1
        future: Future[Any] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the poller gave up on it (its task timeout)
            try:
                future.set_result(self.behave(task, n))
            except Exception as exc:  # noqa: BLE001 - handed to the poller as the task's outcome
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


@pytest.fixture
def services(stage: str) -> Services:
    return poller_services(stage, REPO_ROOT / "infra" / "deployments" / "local.json")


@pytest.fixture
def run_poller(services: Services) -> Iterator[Callable[..., Poller]]:
    forget_endpoints(services)
    with pollers(services) as start_poller:

        def start(
            executor: ScriptedExecutor,
            per_endpoint: dict[str, ScriptedExecutor] | None = None,
            probe: Callable[[Any], bool] | None = None,
            streams: StreamNotifier | None = None,
        ) -> Poller:
            return start_poller(
                lambda endpoint: (per_endpoint or {}).get(endpoint.name, executor),
                probes={"local": probe or (lambda endpoint: True)},
                streams=streams,
            )

        yield start


def submit(services: Services, text: str = "hello", key: str | None = None) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    req = ChatCompletionRequest.model_validate({**body, "prompt_cache_key": key})
    return services.gateway.submit(USER, "chat_completions", req)


def keys_homed_on(services: Services, name: str, n: int) -> list[str]:
    """``n`` conversation names (``prompt_cache_key``) whose affinity home is endpoint ``name``
    (each new conversation starts there, as higher priority once did for every request)."""
    candidates = services.registry.candidates(MODEL, "chat_completions")
    found = []
    for i in range(1000):
        hashed = affinity.key_for(services.settings, USER.id, MODEL, "prompt_cache_key", f"c{i}")
        if router.home_of(hashed, candidates, {}, time.time()) == name:
            found.append(f"c{i}")
        if len(found) == n:
            return found
    raise AssertionError(f"no {n} keys homed on {name}")


def test_the_record_is_completed_before_the_notice_arrives(
    services: Services, run_poller: Callable[[ScriptedExecutor], Poller]
) -> None:
    run_poller(ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])}))
    listener = services.reply_listener
    for _ in range(10):
        request_id = submit(services)
        notice = listener.wait(request_id, 20)
        assert notice is not None and notice["status"] == "completed"
        record = services.requests.get(request_id)  # read at once, on the notice
        assert record is not None and record["status"] == "completed"


def test_a_running_request_keeps_its_lease_past_the_visibility_timeout(
    services: Services, run_poller: Callable[[ScriptedExecutor], Poller]
) -> None:
    lease_s = services.settings.poller_visibility_timeout_s

    def slow(task: dict[str, Any], n: int) -> Any:
        time.sleep(lease_s * 3)
        return {"response": response(task["request_id"])}

    executor = ScriptedExecutor(slow)
    poller = run_poller(executor)
    request_id = submit(services)
    done = services.gateway.wait(request_id, lease_s * 3 + 15)
    assert done.response["id"] == f"chatcmpl-{request_id}"
    record = services.requests.get(request_id)
    assert record is not None and record["attempt"] == 1  # never taken over while alive
    assert executor.attempts[request_id] == 1
    assert poller._leases.counts["heartbeats"] >= 2


def test_a_task_lost_with_its_worker_fails_over_to_the_other_endpoint(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    def lost(task: dict[str, Any], n: int) -> Any:
        raise TaskLostError("worker lost")

    broken = ScriptedExecutor(lost)
    healthy = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    poller = run_poller(healthy, {"local-a": broken})
    request_id = submit(services, key=keys_homed_on(services, "local-a", 1)[0])
    done = services.gateway.wait(request_id, 20)
    assert done.response["choices"][0]["message"]["content"] == "hi"
    # Tried on local-a (its conversation's home), lost there, run on local-b in the same
    # attempt: no redelivery, no wait for a backoff.
    assert broken.attempts[request_id] == 1 and healthy.attempts[request_id] == 1
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "completed" and record["attempt"] == 1
    assert record["endpoint"] == "local-b" and "slot" not in record
    assert poller.counts["endpoint_failures"] == 1

    def all_given_back() -> bool:
        inflight = {n: s.inflight for n, s in services.endpoint_store.statuses().items()}
        return inflight.get("local-a", 0) == 0 and inflight.get("local-b", 0) == 0

    # The poller's leased slots go back once unused for poller_slot_linger_s.
    wait_until(all_given_back, "every slot given back")


def test_the_circuit_opens_after_three_failures_and_traffic_goes_elsewhere(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    def lost(task: dict[str, Any], n: int) -> Any:
        raise TaskLostError("worker lost")

    broken = ScriptedExecutor(lost)
    healthy = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    run_poller(healthy, {"local-a": broken})
    # Five conversations whose home is local-a: each that finds it closed moves to local-b.
    for i, key in enumerate(keys_homed_on(services, "local-a", 5)):
        request_id = submit(services, f"hello {i}", key)
        services.gateway.wait(request_id, 20)
    assert len(broken.attempts) == 3  # then its circuit opened: no more traffic to local-a
    assert len(healthy.attempts) == 5
    status = services.endpoint_store.statuses()["local-a"]
    assert status.failures == 3 and status.opened_at > 0


def test_a_request_waits_for_an_endpoint_to_come_online_instead_of_failing(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    """The stack starting (or every endpoint restarting): nothing serving the model is online
    when the request arrives. It waits in the poller and runs once one is, on its first try."""
    online = threading.Event()
    healthy = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    poller = run_poller(healthy, probe=lambda endpoint: online.is_set())
    request_id = submit(services)
    wait_until(lambda: poller.counts["offline_waits"] == 1, "the request to wait")
    assert healthy.attempts == {}
    online.set()
    done = services.gateway.wait(request_id, 20)
    assert done.response["choices"][0]["message"]["content"] == "hi"
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "completed" and record["attempt"] == 1
    assert poller.counts["run_errors"] == 0


def test_a_finished_stream_delivered_again_gets_its_final_frame_again(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    """The poller that finished a streamed request died between storing the result and posting
    ``done``: the message comes back, and the next poller posts ``done`` from the record."""
    posts: list[tuple[str, dict[str, Any]]] = []

    class Poster:
        def post(self, connection_id: str, text: str) -> None:
            posts.append((connection_id, json.loads(text)))

    notifier = StreamNotifier(services.settings, Poster(), get_logger("test"))  # type: ignore[arg-type]
    never = ScriptedExecutor(lambda task, n: pytest.fail("a finished request must not run"))
    poller = run_poller(never, streams=notifier)
    request_id = f"req_{uuid.uuid4().hex}"
    services.requests.create(
        {
            "request_id": request_id,
            "owner": USER.id,
            "model": MODEL,
            "function": "chat_completions",
            "payload": "{}",
            "stream": {"connection_id": "conn-1", "ref": "r1"},
        }
    )
    services.requests.claim(request_id)
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    services.requests.complete(request_id, {"usage": usage, "endpoint": "local-a"})
    services.interactive_queue.send({"request_id": request_id})  # the dead poller's message
    wait_until(lambda: poller.counts["final_frames_resent"] == 1, "the final frame again")
    ((connection, frame),) = posts
    assert connection == "conn-1" and frame["type"] == "done"
    assert frame["id"] == "r1" and frame["request_id"] == request_id and frame["usage"] == usage
    assert never.attempts == {}


def test_a_stream_its_client_left_is_stored_cancelled_with_the_tokens_that_ran(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    """The HPC function's account says the relay stopped it (``stream_stats.cancelled``): the
    record is ``cancelled``, not ``completed`` with finish_reason stop, and keeps what ran."""
    posts: list[tuple[str, dict[str, Any]]] = []

    class Poster:
        def post(self, connection_id: str, text: str) -> None:
            posts.append((connection_id, json.loads(text)))

    def cut_short(task: dict[str, Any], n: int) -> dict[str, Any]:
        partial = response(task["request_id"])
        partial["choices"][0]["finish_reason"] = None
        partial["usage"] = {"prompt_tokens": 4, "completion_tokens": 17, "total_tokens": 21}
        stats = {"cancelled": True, "completion_tokens": 17, "max_tokens": 2000}
        return {"response": partial, "engine_time_ms": 9.0, "stream_stats": stats}

    notifier = StreamNotifier(services.settings, Poster(), get_logger("test"))  # type: ignore[arg-type]
    run_poller(ScriptedExecutor(cut_short), streams=notifier)
    request_id = f"req_{uuid.uuid4().hex}"
    services.requests.create(
        {
            "request_id": request_id,
            "owner": USER.id,
            "model": MODEL,
            "function": "chat_completions",
            "payload": json.dumps({"messages": [], "max_tokens": 2000}),
            "stream": {"connection_id": "conn-1", "ref": "r1"},
        }
    )
    services.interactive_queue.send({"request_id": request_id})
    wait_until(lambda: bool(posts), "the final frame")
    record = services.requests.get(request_id)
    assert record is not None and record["status"] == "cancelled"
    assert record["usage"]["completion_tokens"] == 17
    view = services.gateway.fetch(USER, request_id)
    assert view["status"] == "cancelled" and view["error"] is None
    assert view["result"]["choices"][0]["finish_reason"] is None
    assert view["result"]["usage"]["completion_tokens"] == 17
    ((connection, frame),) = posts
    assert (connection, frame["type"], frame["status"]) == ("conn-1", "error", 410)
    assert frame["error"]["code"] == "cancelled" and frame["request_id"] == request_id


def test_one_users_flood_does_not_hold_another_users_request_behind_it(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    order: list[str] = []
    release: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def held_until_released(task: dict[str, Any], n: int) -> Any:
        gate = threading.Event()
        with lock:
            order.append(task["request_id"])
            release[task["request_id"]] = gate
        gate.wait(60)
        return {"response": response(task["request_id"])}

    poller = run_poller(ScriptedExecutor(held_until_released))
    slots = sum(e.max_inflight for e in services.registry.endpoints)  # 4 + 2
    flood = [submit(services, f"flood {i}") for i in range(20)]
    wait_until(lambda: len(order) == slots, "the flood to fill every slot")
    quiet = services.gateway.submit(
        Principal(id="bob", username="bob", kind="user"),
        "chat_completions",
        ChatCompletionRequest.model_validate(
            {"model": MODEL, "messages": [{"role": "user", "content": "me too"}]}
        ),
    )
    wait_until(lambda: poller.waiting_for_slots == 20 - slots + 1, "every request held")
    with lock:
        release[order[0]].set()  # one slot frees
    wait_until(lambda: len(order) == slots + 1, "the next start")
    assert order[slots] == quiet  # bob's first request took it, ahead of 14 older ones
    for request_id in flood + [quiet]:
        wait_until(lambda r=request_id: r in release, "every request started")
        release[request_id].set()


def test_a_redelivered_message_never_runs_its_request_twice(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    """The message carries the record (the API wrote none): its first delivery's claim writes
    it; the same message delivered again after the request finished is dropped, not run."""
    executor = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    poller = run_poller(executor)
    request_id = f"req_{uuid.uuid4().hex}"
    record = services.requests.new(
        {
            "request_id": request_id,
            "owner": USER.id,
            "model": MODEL,
            "function": "chat_completions",
            "payload": "{}",
        }
    )
    message = {"request_id": request_id, "record": record}
    services.interactive_queue.send(message)
    wait_until(
        lambda: (services.requests.get(request_id) or {}).get("status") == "completed", "done"
    )
    services.interactive_queue.send(message)  # SQS delivers a message at least once
    wait_until(lambda: poller.counts["duplicates_dropped"] == 1, "the duplicate dropped")
    assert executor.attempts[request_id] == 1
    done = services.requests.get(request_id)
    assert done is not None and done["attempt"] == 1 and done["created_at"] == record["created_at"]


def test_a_request_past_its_wait_is_recorded_before_its_id_goes_out(own_stage: str) -> None:
    """No poller takes it: the record only the message held is written (queued) before the
    client gets the id to collect it by."""
    services = poller_services(own_stage, REPO_ROOT / "infra" / "deployments" / "local.json")
    req = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "anyone?"}], "max_tokens": 1}
    )
    with pytest.raises(FirstError) as raised:
        services.gateway.run(USER, "chat_completions", req, wait_s=0.2)
    request_id = raised.value.request_id
    assert request_id is not None and raised.value.STATUS_CODE in (503, 504)
    assert services.gateway.fetch(USER, request_id)["status"] == "queued"


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_conversation_moved_off_its_home_stays_moved_after_one_write(
    services: Services, run_poller: Callable[..., Poller]
) -> None:
    """Its home loses the task once: the conversation fails over, the move is written once
    (on the new endpoint's item), and its next turns go there though the old home works."""
    failed = threading.Event()

    def once(task: dict[str, Any], n: int) -> Any:
        if not failed.is_set():
            failed.set()
            raise TaskLostError("worker lost")
        return {"response": response(task["request_id"])}

    a = ScriptedExecutor(once)
    b = ScriptedExecutor(lambda task, n: {"response": response(task["request_id"])})
    poller = run_poller(b, {"local-a": a})
    key = keys_homed_on(services, "local-a", 1)[0]
    turns = [submit(services, f"turn {i}", key) for i in range(1)]
    services.gateway.wait(turns[0], 20)
    for i in range(1, 4):
        turns.append(submit(services, f"turn {i}", key))
        services.gateway.wait(turns[-1], 20)
    assert [services.requests.get(t)["endpoint"] for t in turns] == ["local-b"] * 4  # type: ignore[index]
    assert list(a.attempts.values()) == [1]  # only the first turn was tried there
    assert poller.counts["affinity_moves"] == 1
    assert poller.counts["affinity_misses"] == 1 and poller.counts["affinity_hits"] == 3
    homes = services.endpoint_store.statuses()["local-b"].homes
    assert len(homes) == 1
