"""HPC functions as jobs through the whole stack: the queue, a poller, the local compute endpoint.

A job counts the blobs of an image made here (sent as a file and inline); a poller killed mid-job
loses nothing and runs nothing twice; cancel stops a long job where it checks; a job's progress
shows while it runs.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import requests
from openai import OpenAI

from chalicelib.services import Services
from offline.background import BackgroundStack
from tests.e2e.test_durability import restarted, stats, wait_for
from tests.unit.test_jobs import CENTRES, blobs_image, png_base64

COUNT = "first/count-objects"
SLEEP = "first/sleep-steps"


def api(stack: BackgroundStack, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    return requests.request(
        method, f"{stack.config.api_url}/v1{path}", headers=headers, timeout=30, **kw
    )


def finished(stack: BackgroundStack, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = api(stack, "GET", f"/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout_s, f"job {job_id} to finish")  # type: ignore[no-any-return]


def running_with_progress(stack: BackgroundStack, job_id: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        job: dict[str, Any] = api(stack, "GET", f"/jobs/{job_id}").json()
        return job if job["status"] == "running" and job["progress"] else None

    return wait_for(seen, 60, f"job {job_id} to report progress")  # type: ignore[no-any-return]


def test_a_job_counts_the_objects_of_an_uploaded_and_an_inline_image(
    client: OpenAI, stack: BackgroundStack
) -> None:
    listed = api(stack, "GET", "/functions").json()
    assert COUNT in {f["id"] for f in listed["data"]}
    image = png_base64(blobs_image(CENTRES))
    import base64

    uploaded = client.files.create(file=("cells.png", base64.b64decode(image)), purpose="user_data")
    by_file = api(
        stack, "POST", "/jobs", json={"function": COUNT, "input": {}, "files": [uploaded.id]}
    )
    inline = api(stack, "POST", "/jobs", json={"function": COUNT, "input": {"image_base64": image}})
    for answer in (by_file, inline):
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] in ("queued", "running", "succeeded")
        job = finished(stack, answer.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["count"] == len(CENTRES)
        found = sorted(
            (round(o["centroid"]["x"]), round(o["centroid"]["y"])) for o in job["result"]["objects"]
        )
        assert found == sorted(CENTRES)
        assert job["progress"]["fraction"] == 1.0
        assert job["usage"]["compute_time_ms"] > 0
    mine = api(stack, "GET", "/jobs").json()["data"]
    assert {by_file.json()["id"], inline.json()["id"]} <= {j["id"] for j in mine}


def test_a_bad_input_is_an_openai_400_naming_the_field(stack: BackgroundStack) -> None:
    answer = api(stack, "POST", "/jobs", json={"function": COUNT, "input": {"threshold": "x"}})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "input.threshold" and error["type"] == "invalid_request_error"


def test_a_killed_poller_mid_job_loses_nothing_and_runs_nothing_twice(
    stack: BackgroundStack, services: Services
) -> None:
    created = api(
        stack, "POST", "/jobs", json={"function": SLEEP, "input": {"steps": 24, "step_s": 0.25}}
    )
    job_id = created.json()["id"]
    running_with_progress(stack, job_id)
    before = stack.pids()
    os.kill(before["poller-0"], signal.SIGKILL)
    job = finished(stack, job_id)
    assert job["status"] == "succeeded", job
    assert job["result"]["steps"] == 24
    record = services.requests.get(job_id)
    assert record is not None and record["attempt"] == 2  # the dead poller's, then its successor's
    assert stats(stack)["runs"][f"task-{job_id}"] == 1  # the function ran once
    assert wait_for(lambda: restarted(stack, "poller-0", before["poller-0"]), 30, "restart")


def test_cancel_stops_a_long_job_where_it_checks(stack: BackgroundStack) -> None:
    created = api(
        stack, "POST", "/jobs", json={"function": SLEEP, "input": {"steps": 600, "step_s": 0.1}}
    )
    job_id = created.json()["id"]
    running = running_with_progress(stack, job_id)
    assert 0 < running["progress"]["fraction"] < 1
    cancelled = api(stack, "POST", f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # The function itself stopped: its task answers the cancel, long before its 600 steps.
    auth = {"Authorization": f"Bearer {stack.endpoint_token}"}
    outcomes = []
    deadline = time.monotonic() + 30
    while not outcomes and time.monotonic() < deadline:
        for url in (stack.config.compute_url, stack.config.compute_b_url):
            got = requests.get(f"{url}/tasks/task-{job_id}?wait=1", headers=auth, timeout=10)
            if got.status_code == 200 and got.json()["status"] != "pending":
                outcomes.append(got.json())
    assert outcomes, "the cancelled task never stopped"
    (outcome,) = outcomes
    assert outcome["result"]["error"]["code"] == "cancelled"
    assert outcome["result"]["status_code"] == 499
    assert api(stack, "GET", f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_another_users_job_is_a_404_on_every_job_route_over_http(stack: BackgroundStack) -> None:
    from tests.e2e.conftest import create_key

    created = api(
        stack, "POST", "/jobs", json={"function": SLEEP, "input": {"steps": 1, "step_s": 0}}
    )
    job_id = created.json()["id"]
    other = {"Authorization": f"Bearer {create_key(stack, 'job-outsider')}"}
    base = f"{stack.config.api_url}/v1/jobs"
    for method, url in (("GET", f"{base}/{job_id}"), ("POST", f"{base}/{job_id}/cancel")):
        answer = requests.request(method, url, headers=other, timeout=30)
        assert answer.status_code == 404, (method, url, answer.text)
        assert answer.json()["error"]["param"] == "job_id"
    listed = requests.get(base, headers=other, timeout=30).json()
    assert job_id not in {j["id"] for j in listed["data"]}
    paged = requests.get(f"{base}?after={job_id}", headers=other, timeout=30)
    assert paged.status_code == 404
    # A chat request's id is not a job's, even to its owner.
    chat = api(
        stack,
        "POST",
        "/chat/completions",
        json={
            "model": "first/tiny-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
    )
    assert api(stack, "GET", f"/jobs/{chat.headers['x-request-id']}").status_code == 404
    assert finished(stack, job_id)["status"] == "succeeded"


def test_a_killed_worker_mid_job_runs_it_again_and_it_completes_once(
    stack: BackgroundStack, services: Services
) -> None:
    before = stats(stack)
    created = api(
        stack, "POST", "/jobs", json={"function": SLEEP, "input": {"steps": 40, "step_s": 0.1}}
    )
    job_id = created.json()["id"]
    running = running_with_progress(stack, job_id)
    os.kill(int(running["progress"]["pid"]), signal.SIGKILL)
    job = finished(stack, job_id, timeout_s=120)
    # The task was lost with its worker (WorkerLost, the infrastructure's failure): the poller
    # ran the job again, from the start, and it completed once.
    assert job["status"] == "succeeded", job
    assert job["result"]["steps"] == 40 and job["progress"]["fraction"] == 1.0
    after = stats(stack)
    assert after["lost"] == before["lost"] + 1
    assert after["runs"][f"task-{job_id}"] == 2
    record = services.requests.get(job_id)
    assert record is not None and record["status"] == "completed"
