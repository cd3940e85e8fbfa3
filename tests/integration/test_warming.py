"""Warm-ups and starting models, against moto with the real gateway, fleet, poller and stores.

The compute side is the injected executor seam, and each endpoint's probe answer (what a
local endpoint's ``/health`` says of its models) is set by the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from chalicelib.errors import ModelNotFoundError, UpstreamUnavailableError
from chalicelib.poller.board import Health
from chalicelib.poller.worker import Poller
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.registry import Endpoint
from chalicelib.services import Services
from tests.integration.pollers import forget_endpoints, pollers
from tests.integration.test_poller import MODEL, USER, response
from tests.integration.test_poller import services as services  # noqa: F401 - the fixture


class Cluster:
    """One endpoint: its models' states as its /health reports them, and the tasks it got.
    A warm-up finishes when the test says; requests run at once unless ``hold`` is set."""

    def __init__(self, state: str) -> None:
        self.models = {MODEL: state}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.loads: list[Future[Any]] = []
        self.hold = threading.Event()
        self.hold.set()

    def probe(self) -> Health:
        return Health(True, dict(self.models))

    def submit_to_registered_function(
        self, function_id: str, args: Any = (), kwargs: Any = None
    ) -> Future[Any]:
        task = args[0]
        self.calls.append((function_id, task))
        future: Future[Any] = Future()
        if function_id == "local:warm":
            self.loads.append(future)
            return future

        def run() -> None:
            self.hold.wait(60)
            future.set_result({"response": response(task["request_id"])})

        threading.Thread(target=run, daemon=True).start()
        return future

    def finish_load(self) -> None:
        self.models[MODEL] = "hot"
        for load in self.loads:
            load.set_result({"status": "hot", "model": MODEL})

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


@pytest.fixture
def fleet(services: Services) -> Iterator[Callable[[str], tuple[dict[str, Cluster], Poller]]]:
    forget_endpoints(services)
    with pollers(services) as start_poller:

        def start(state: str) -> tuple[dict[str, Cluster], Poller]:
            clusters = {e.name: Cluster(state) for e in services.registry.endpoints}

            def probe(endpoint: Endpoint) -> Health:
                return clusters[endpoint.name].probe()

            poller = start_poller(lambda e: clusters[e.name], probes={"local": probe})
            return clusters, poller

        yield start


def chat(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    )


def heard(services: Services, state: str) -> bool:
    """Both endpoints' heartbeats are in, and the model reads ``state``."""
    statuses = services.endpoint_store.statuses()
    heard_from = all(e.name in statuses for e in services.registry.endpoints)
    return heard_from and status_of(services) == state


def status_of(services: Services) -> str:
    services.fleet._cached = (0.0, {})  # read the table now, not a second ago
    return str(services.fleet.annotate({"id": MODEL})["status"])


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_warming_a_cold_model_starts_it_on_the_routers_choice_until_it_is_hot(
    services: Services, fleet: Callable[[str], tuple[dict[str, Cluster], Poller]]
) -> None:
    clusters, poller = fleet("cold")
    wait_until(lambda: heard(services, "cold"), "the heartbeats")
    warming = services.gateway.warm(USER, MODEL)
    assert warming.started and warming.status == "starting"
    assert warming.body()["object"] == "model.warm"
    # Both cold: local-a is the router's choice (the higher priority); only it warms.
    assert warming.deployments == [
        {"endpoint": "local-a", "status": "starting"},
        {"endpoint": "local-b", "status": "cold"},
    ]
    assert status_of(services) == "starting"  # everyone sees it at once (the mark)
    wait_until(lambda: len(clusters["local-a"].loads) == 1, "the warm task on local-a")
    function_id, task = clusters["local-a"].calls[0]
    assert function_id == "local:warm" and task["engine"]["model"] == MODEL
    assert clusters["local-b"].calls == []
    again = services.gateway.warm(USER, MODEL)
    assert not again.started and again.status == "starting"  # not sent twice
    clusters["local-a"].finish_load()
    wait_until(lambda: status_of(services) == "hot", "the model hot")
    hot = services.gateway.warm(USER, MODEL)
    assert hot.status == "hot" and not hot.started
    assert poller.warmer.counts["warms_started"] == 1
    assert not services.endpoint_store.statuses()["local-a"].warming  # the mark is gone
    with pytest.raises(ModelNotFoundError):
        services.gateway.warm(USER, "no/such-model")


def test_a_request_for_a_cold_model_warms_it_and_is_served(
    services: Services, fleet: Callable[[str], tuple[dict[str, Cluster], Poller]]
) -> None:
    clusters, poller = fleet("cold")
    wait_until(lambda: heard(services, "cold"), "the heartbeats")
    request_id = services.gateway.submit(USER, "chat_completions", chat("hello"))
    wait_until(lambda: poller.warmer.counts["warms_started"] == 1, "the warm-up")
    done = services.gateway.wait(request_id, 20)
    assert done.response["id"] == f"chatcmpl-{request_id}"
    functions = [f for f, _ in clusters["local-a"].calls]
    assert functions == ["local:warm", "local:chat_completions"]


def test_a_request_past_the_wait_for_a_starting_model_gets_503_and_is_collected_later(
    services: Services, fleet: Callable[[str], tuple[dict[str, Cluster], Poller]]
) -> None:
    clusters, _ = fleet("starting")
    wait_until(lambda: heard(services, "starting"), "the heartbeats")
    for cluster in clusters.values():
        cluster.hold.clear()  # the workers are still loading
    with pytest.raises(UpstreamUnavailableError) as raised:
        services.gateway.run(USER, "chat_completions", chat("are you up?"), wait_s=1)
    error = raised.value
    request_id = error.request_id
    assert request_id is not None and request_id in error.message
    assert error.STATUS_CODE == 503 and error.code == "model_starting"
    # No endpoint said how long its load takes: the estimate (60 s) is the Retry-After.
    assert error.headers["Retry-After"] == "60"
    assert services.gateway.fetch(USER, request_id)["status"] in ("queued", "dispatched")
    for cluster in clusters.values():
        cluster.models[MODEL] = "hot"
        cluster.hold.set()
    wait_until(lambda: services.gateway.fetch(USER, request_id)["status"] == "completed", "served")
    result = services.gateway.fetch(USER, request_id)["result"]
    assert result["id"] == f"chatcmpl-{request_id}"


def test_a_job_on_a_cold_endpoint_runs_its_function_and_warms_nothing(
    services: Services, fleet: Callable[[str], tuple[dict[str, Cluster], Poller]]
) -> None:
    """An HPC function has no engine to load: the poller runs it wherever it routes it, as a
    model's request, and sends no warm-up (``FUNCTION_KIND``)."""
    import json

    clusters, poller = fleet("cold")
    wait_until(lambda: heard(services, "cold"), "the heartbeats")
    body = {"function": "first/sleep-steps", "input": {"steps": 1, "step_s": 0}}
    job = services.jobs.submit(USER, json.dumps(body).encode())
    wait_until(lambda: services.jobs.get(USER, job["id"])["status"] == "succeeded", "the job done")
    calls = [(f, t) for c in clusters.values() for f, t in c.calls]
    assert [f for f, _ in calls] == ["local:sleep_steps"]
    assert calls[0][1]["engine"]["kind"] == "function"
    assert calls[0][1]["body"]["input"] == body["input"]
    assert poller.warmer.counts["warms_started"] == 0
    assert services.jobs.get(USER, job["id"])["result"]["id"] == f"chatcmpl-{job['id']}"
