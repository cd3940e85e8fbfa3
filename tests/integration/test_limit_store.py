"""The limits table on moto: atomic conditional counters, rollback, release, lease reset."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from chalicelib import limits
from chalicelib.auth import Principal
from chalicelib.limits import LimitsConfig
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.services import Services
from chalicelib.stores.limits import LimitStore

REQ = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10)


def store(services: Services) -> LimitStore:
    return LimitStore(services.dynamodb.Table(services.settings.limits_table_name))


def user() -> Principal:
    return Principal(id=f"u-{uuid.uuid4().hex[:8]}", username="u")


def config(**default: int) -> LimitsConfig:
    return LimitsConfig.model_validate({"default": default})


def item(services: Services, key: str) -> dict[str, int]:
    table = services.dynamodb.Table(services.settings.limits_table_name)
    got = table.get_item(Key={"pk": key}, ConsistentRead=True).get("Item") or {}
    return {k: int(v) for k, v in got.items() if k != "pk"}


def test_parallel_admissions_never_pass_the_limit(services: Services) -> None:
    s, who, now = store(services), user(), time.time()
    plan = limits.plan(config(requests_per_minute=5), who, "m", REQ, now)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: s.admit(plan, now), range(12)))
    admitted = [o for o in outcomes if o.refused is None]
    assert len(admitted) == 5
    assert sorted(o.counts[plan.updates[0].key]["requests"] for o in admitted) == [1, 2, 3, 4, 5]
    assert item(services, plan.updates[0].key)["requests"] == 5


def test_a_refusal_takes_back_what_the_other_items_added(services: Services) -> None:
    s, who, now = store(services), user(), time.time()
    cfg = config(requests_per_minute=100, max_concurrent=1)
    plan = limits.plan(cfg, who, "m", REQ, now)
    assert s.admit(plan, now).refused is None
    outcome = s.admit(plan, now)
    assert outcome.refused is not None and outcome.refused.lease
    assert item(services, plan.updates[0].key)["requests"] == 1  # the second was taken back
    assert limits.rejection(plan, outcome, now).headers["Retry-After"] == "1"


def test_release_frees_the_slot_and_corrects_tokens(services: Services) -> None:
    s, who, now = store(services), user(), time.time()
    cfg = config(tokens_per_minute=10_000, max_concurrent=1)
    plan = limits.plan(cfg, who, "m", REQ, now)
    assert s.admit(plan, now).refused is None
    hold = plan.hold()
    assert hold is not None
    s.release(hold, used_tokens=7)
    assert item(services, f"user#{who.id}#inflight")["inflight"] == 0
    assert item(services, plan.updates[0].key)["tokens:m"] == 7
    s.release(hold, used_tokens=7)  # a second release never goes below zero
    assert item(services, f"user#{who.id}#inflight")["inflight"] == 0
    assert s.admit(plan, now).refused is None


def test_a_leaked_slot_stops_counting_when_its_lease_runs_out(services: Services) -> None:
    s, who, now = store(services), user(), time.time()
    cfg = config(max_concurrent=1)
    leaked = limits.plan(cfg, who, "m", REQ, now - 1000, inflight_ttl_s=900)
    assert s.admit(leaked, now - 1000).refused is None  # never released
    later = limits.plan(cfg, who, "m", REQ, now, inflight_ttl_s=900)
    outcome = s.admit(later, now)
    assert outcome.refused is None
    assert item(services, f"user#{who.id}#inflight")["inflight"] == 1


def test_model_budget_is_shared_by_all_users(services: Services) -> None:
    s, now = store(services), time.time()
    model = f"m-{uuid.uuid4().hex[:6]}"
    cfg = LimitsConfig.model_validate({"models": {model: {"tokens_per_minute": 50}}})
    req = REQ.model_copy(update={"model": model, "max_tokens": 30})
    first = limits.plan(cfg, user(), model, req, now)
    assert s.admit(first, now).refused is None
    assert s.admit(limits.plan(cfg, user(), model, req, now), now).refused is None
    third = limits.plan(cfg, user(), model, req, now)
    outcome = s.admit(third, now)
    assert outcome.refused is not None
    headers = limits.rejection(third, outcome, now).headers
    assert headers["x-ratelimit-limit-tokens"] == "50"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
