"""Federation on the local stack's two clusters: status, operator view, failover under load."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.conftest import TINY, create_key
from tests.e2e.test_durability import wait_for


def endpoints(stack: BackgroundStack, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or stack.api_key}"}
    return requests.get(f"{stack.config.api_url}/v1/endpoints", headers=headers, timeout=10)


def online(stack: BackgroundStack) -> dict[str, str]:
    return {e["name"]: e["status"] for e in endpoints(stack).json()["data"]}


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
