"""Federation on the local stack's two clusters: status, operator view, failover under load, a
circuit's whole cycle, and a cold model's 503 + Retry-After."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.conftest import COLD_MODEL, TINY, WARM_NAMED_MODEL, create_key
from tests.e2e.test_durability import wait_for


def endpoints(stack: BackgroundStack, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or stack.api_key}"}
    return requests.get(f"{stack.config.api_url}/v1/endpoints", headers=headers, timeout=10)


def online(stack: BackgroundStack) -> dict[str, str]:
    return {e["name"]: e["status"] for e in endpoints(stack).json()["data"]}


def endpoint_view(stack: BackgroundStack, name: str) -> dict[str, Any]:
    view: dict[str, Any] = next(e for e in endpoints(stack).json()["data"] if e["name"] == name)
    return view


def runs_on_b(stack: BackgroundStack) -> dict[str, int]:
    """local-b's own count of how many times it ran each task (``/stats``)."""
    headers = {"Authorization": f"Bearer {stack.endpoint_token}"}
    stats = requests.get(f"{stack.config.compute_b_url}/stats", headers=headers, timeout=10)
    runs: dict[str, int] = stats.json()["runs"]
    return runs


def test_models_carry_their_status_and_only_operators_see_the_endpoints(
    client: OpenAI, stack: BackgroundStack
) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert models[TINY].model_extra and models[TINY].model_extra["status"] == "hot"
    view = endpoints(stack)
    assert view.status_code == 200
    body = view.json()
    assert body["object"] == "list" and isinstance(body["queue_depth"], int)
    by_name = {e["name"]: e for e in body["data"]}
    assert set(by_name) == {"local-a", "local-b"}
    assert by_name["local-a"]["capacity"] > by_name["local-b"]["capacity"]
    assert all(e["status"] == "online" and e["circuit"] == "closed" for e in body["data"])
    assert by_name["local-b"]["models"][TINY] == "hot"
    outsider = endpoints(stack, create_key(stack, "not-an-operator"))
    assert outsider.status_code == 403
    assert outsider.json()["error"]["type"] == "invalid_request_error"


def test_stopping_a_cluster_mid_load_loses_nothing_and_the_other_serves_it_all(
    client: OpenAI, stack: BackgroundStack, services: Services
) -> None:
    def one(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=TINY,
            messages=[{"role": "user", "content": f"Federated hello {i}"}],
            max_tokens=48,
        )
        assert raw.http_response.status_code == 200
        return str(raw.headers["x-request-id"])

    try:
        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(one, range(24)))
            stopping = pool.submit(stack.first, "local", "endpoint", "stop", "local-b")
            during = list(pool.map(one, range(24, 48)))
            assert stopping.result() == "local-b stopped"
        after = [one(i) for i in range(48, 56)]
        ids = first + during + after
        assert len(set(ids)) == len(ids)  # every request answered, each once

        served = Counter()
        for request_id in ids:
            record = services.requests.get(request_id)
            assert record is not None and record["status"] == "completed"
            served[record["endpoint"]] += 1
        # Before the stop both clusters took work; once it was down, only local-a.
        before = Counter(services.requests.get(r)["endpoint"] for r in first)  # type: ignore[index]
        assert before["local-a"] > 0 and before["local-b"] > 0
        assert all(services.requests.get(r)["endpoint"] == "local-a" for r in after)  # type: ignore[index]
        wait_for(lambda: online(stack).get("local-b") == "offline", 30, "local-b offline")
    finally:
        stack.first("local", "endpoint", "start", "local-b")
    wait_for(lambda: online(stack).get("local-b") == "online", 30, "local-b back online")


def test_warming_a_hot_model_answers_200_hot_and_an_unknown_one_404(
    stack: BackgroundStack,
) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    base = f"{stack.config.api_url}/v1/models"
    for path in (f"{base}/first%2Ftiny-chat/warm", f"{base}/{TINY}/warm"):
        answer = requests.post(path, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "model.warm" and body["model"] == TINY
        assert body["status"] == "hot"
        assert {d["endpoint"] for d in body["deployments"]} == {"local-a", "local-b"}
    missing = requests.post(f"{base}/no%2Fsuch-model/warm", headers=headers, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_a_stopped_clusters_circuit_opens_then_one_probe_half_opens_and_success_closes_it(
    client: OpenAI, stack: BackgroundStack, services: Services
) -> None:
    served: list[str] = []

    def burst() -> list[str]:
        """Eight concurrent requests: more than local-a has slots, so local-b gets some."""

        def one(i: int) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model=TINY, messages=[{"role": "user", "content": f"Circuit {i}"}], max_tokens=8
            )
            assert raw.http_response.status_code == 200
            return str(raw.headers["x-request-id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(one, range(8)))
        served.extend(ids)
        return ids

    def until(done: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        """Send bursts until ``done`` (each burst's requests all answered 200)."""
        wait_for(lambda: done() or not burst(), timeout_s, what)

    def endpoint_of(request_id: str) -> str:
        record = services.requests.get(request_id)
        assert record is not None and record["status"] == "completed"
        return str(record["endpoint"])

    b = lambda: endpoint_view(stack, "local-b")  # noqa: E731
    # From a clean start whatever an earlier test left: local-b up and its circuit closed.
    until(lambda: b()["status"] == "online" and b()["consecutive_failures"] == 0, "closed")
    assert stack.first("local", "endpoint", "stop", "local-b") == "local-b stopped"
    try:
        # Its failures open the circuit: written as the poller writes each failed task
        # (test_poller proves real failures do). Real failures here raced local-b's probes:
        # once a probe saw it down it was skipped as offline, and the circuit stayed closed.
        for _ in range(2):  # FIRST_CIRCUIT_FAILURES_TO_OPEN here
            services.endpoint_store.record_failure("local-b", 2)
        wait_for(lambda: b()["circuit"] == "open", 10, "local-b's circuit open")
        assert b()["consecutive_failures"] >= 2
        while_open = burst()
        assert {endpoint_of(r) for r in while_open} == {"local-a"}
    finally:
        assert stack.first("local", "endpoint", "start", "local-b") == "local-b started"
    restarted = len(served)
    wait_for(lambda: b()["status"] == "online", 30, "local-b back online")
    # No request is sent meanwhile: after the cooldown the circuit half-opens and waits.
    wait_for(lambda: b()["circuit"] == "half_open", 30, "local-b's circuit half-open")
    until(lambda: any(endpoint_of(r) == "local-b" for r in served[-8:]), "a probe on local-b")
    # The probe's success closes it (the API's view of the table is up to a second old).
    wait_for(lambda: b()["circuit"] == "closed", 10, "local-b's circuit closed")
    assert b()["consecutive_failures"] == 0
    # local-b serves again: every request recorded there ran there (its own count), once.
    until(lambda: sum(endpoint_of(r) == "local-b" for r in served[-8:]) >= 2, "local-b serving")
    on_b = [r for r in served[restarted:] if endpoint_of(r) == "local-b"]
    runs = runs_on_b(stack)
    assert len(on_b) >= 2 and all(runs.get(f"task-{r}") == 1 for r in on_b), (on_b, runs)
    assert all(endpoint_of(r) for r in served)  # every request of the test completed


def status_of(client: OpenAI, model: str) -> object:
    """The model's warmth, one of its extras (``capabilities`` is the other)."""
    return (client.models.retrieve(model).model_extra or {}).get("status")


def test_a_model_whose_every_deployment_is_cold_answers_503_retry_after_and_is_served_later(
    client: OpenAI, stack: BackgroundStack
) -> None:
    assert status_of(client, COLD_MODEL) == "cold"
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model=COLD_MODEL, messages=[{"role": "user", "content": "Are you up?"}], max_tokens=4
        )
    error = info.value
    assert error.status_code == 503 and error.code == "model_starting"
    # Nothing has timed a load of it yet: the estimate (60 s) is past the wait (20 s here).
    retry_after = int(error.response.headers["Retry-After"])
    assert 1 <= retry_after <= 120
    assert isinstance(error.body, dict)
    request_id = str(error.body["request_id"])
    assert error.response.headers["x-request-id"] == request_id and request_id in error.message
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    url = f"{stack.config.api_url}/v1/requests/{request_id}"

    def collected() -> bool:
        view = requests.get(url, headers=headers, timeout=10).json()
        assert view["status"] != "failed", view
        return bool(view["status"] == "completed")

    # Still served: the poller warms the model on local-a and runs the request there.
    wait_for(collected, 60, "the request completed")
    result = requests.get(url, headers=headers, timeout=10).json()["result"]
    assert result["object"] == "chat.completion" and result["choices"][0]["message"]["content"]
    hot = lambda: status_of(client, COLD_MODEL) == "hot"  # noqa: E731
    wait_for(hot, 30, "the model hot")


def test_a_model_id_ending_in_warm_is_retrieved_and_warmed_by_its_path(
    stack: BackgroundStack,
) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    base = f"{stack.config.api_url}/v1/models"
    got = requests.get(f"{base}/{WARM_NAMED_MODEL}", headers=headers, timeout=10)
    assert got.status_code == 200, got.text
    assert got.json()["id"] == WARM_NAMED_MODEL and got.json()["status"] == "hot"
    warmed = requests.post(f"{base}/{WARM_NAMED_MODEL}/warm", headers=headers, timeout=10)
    assert warmed.status_code == 200 and warmed.json()["model"] == WARM_NAMED_MODEL
