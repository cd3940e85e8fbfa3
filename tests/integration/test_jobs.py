"""The job routes on the moto server: a job is a request record of another kind, queued on the
one interactive queue; its owner sees it (one, in a paged list), another user's id answers 404
on every job route, a forbidden function is absent and not found, a bad input is a 400 naming the
field, and cancel makes a queued job cancelled (the poller then drops it) and leaves its mark
for the function."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError, FirstError, NotFoundError
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT, Settings

COUNT = "first/count-objects"
SLEEP = "first/sleep-steps"
LAB_ONLY = "first/sleep-lab"


def someone(prefix: str, *groups: str) -> Principal:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return Principal(id=name, username=name, groups=frozenset(groups))


@pytest.fixture
def job_services(stage: str, aws_session: boto3.Session, tmp_path: Path) -> Services:
    data = json.loads((REPO_ROOT / "infra" / "deployments" / "local.json").read_text())
    sleep = next(f for f in data["functions"] if f["name"] == SLEEP)
    data["functions"].append({**sleep, "name": LAB_ONLY, "access": {"groups": ["lab"]}})
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(data))
    settings = Settings(stage=stage, registry_path=str(registry), wait_timeout_s=5)
    return Services(settings, session=aws_session)


def submit(s: Services, who: Principal, function: str = SLEEP, **args: Any) -> dict[str, Any]:
    body = {"function": function, "input": args or {"steps": 1, "step_s": 0}}
    return s.jobs.submit(who, json.dumps(body).encode())


def test_a_job_is_answered_at_once_and_rides_the_request_queue(job_services: Services) -> None:
    s = job_services
    alice = someone("alice")
    job = submit(s, alice)
    assert job["object"] == "job" and job["status"] == "queued" and job["function"] == SLEEP
    assert isinstance(job["created_at"], int) and job["id"].startswith("req_")
    # The one request path: a record of the requests table, its message on the interactive queue.
    record = s.requests.get(job["id"])
    assert record is not None and record["function"] == "sleep_steps" and record["model"] == SLEEP
    assert record["job_owner"] == alice.id
    bodies = [
        json.loads(m["Body"]) for m in s.interactive_queue.receive(10, 1, 30)
    ]  # the shared stage's queue: other tests' messages may be there too
    assert job["id"] in {b.get("request_id") for b in bodies}
    assert s.jobs.get(alice, job["id"])["status"] == "queued"


def test_another_users_job_is_a_404_on_every_job_route(job_services: Services) -> None:
    s = job_services
    alice, bob = someone("alice"), someone("bob")
    job = submit(s, alice)
    for call in (lambda: s.jobs.get(bob, job["id"]), lambda: s.jobs.cancel(bob, job["id"])):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.to_body()["error"]["param"] == "job_id"
    with pytest.raises(NotFoundError):
        s.jobs.list(bob, {"after": job["id"]})
    assert s.jobs.list(bob, {})["data"] == []
    assert s.jobs.get(alice, job["id"])["status"] == "queued"  # untouched by bob's cancel
    # A request that is not a job is not one either, even to its owner.
    chat_id = s.gateway.submit(alice, "chat_completions", _chat())
    s.gateway.detach(chat_id)
    with pytest.raises(NotFoundError):
        s.jobs.get(alice, chat_id)


def _chat() -> Any:
    from chalicelib.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": "first/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    )


def test_own_jobs_are_listed_newest_first_and_paged(job_services: Services) -> None:
    s = job_services
    carol = someone("carol")
    ids = [submit(s, carol)["id"] for _ in range(3)]
    first = s.jobs.list(carol, {"limit": "2"})
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = s.jobs.list(carol, {"limit": "2", "after": first["last_id"]})
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_a_forbidden_function_is_absent_and_not_found(job_services: Services) -> None:
    s = job_services
    outsider, member = someone("out"), someone("in", "lab")
    assert LAB_ONLY not in {f["id"] for f in s.jobs.list_functions(outsider)["data"]}
    listed = {f["id"]: f for f in s.jobs.list_functions(member)["data"]}
    assert {COUNT, SLEEP, LAB_ONLY} <= set(listed)
    assert listed[COUNT]["input_schema"]["properties"]["threshold"]
    with pytest.raises(NotFoundError) as caught:
        submit(s, outsider, LAB_ONLY)
    assert caught.value.to_body()["error"]["code"] == "function_not_found"
    assert submit(s, member, LAB_ONLY)["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"function": SLEEP, "input": {"steps": 0, "step_s": 0}}, "input.steps", 400),
        ({"function": SLEEP, "input": {"steps": 1}}, "input", 400),
        ({"function": COUNT, "input": {}, "files": ["file-nope"]}, "files[0]", 404),
        ({"function": SLEEP, "input": {"x": "y" * 2048}}, "input", 413),
        ({"input": {}}, "function", 400),
    ],
)
def test_a_bad_job_is_refused_naming_the_field(
    job_services: Services, body: dict[str, Any], param: str, status: int
) -> None:
    with pytest.raises(FirstError) as caught:
        job_services.jobs.submit(someone("dan"), json.dumps(body).encode())
    assert caught.value.STATUS_CODE == status
    assert caught.value.to_body()["error"]["param"] == param
    if status == 400:
        assert isinstance(caught.value, BadRequestError)


def test_cancel_makes_a_queued_job_cancelled_and_leaves_the_mark(job_services: Services) -> None:
    s = job_services
    erin = someone("erin")
    job = submit(s, erin)
    cancelled = s.jobs.cancel(erin, job["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "cancelled"
    # Again: answered as it is.
    assert s.jobs.cancel(erin, job["id"])["status"] == "cancelled"
    payload = s.blobs.load(s.requests.get(job["id"]) or {}, "payload")
    mark = s.objects.get_bytes(payload["job"]["cancel_key"])
    assert mark == b"cancelled"
    # The poller's claim now loses: a cancelled job never runs.
    from chalicelib.stores.requests import RequestConflictError

    with pytest.raises(RequestConflictError):
        s.requests.claim(job["id"], slot="local-a")
