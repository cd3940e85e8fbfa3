"""Rate-limit decisions (pure): which limits apply, which counters move, what the client sees."""

from __future__ import annotations

import pytest

from chalicelib import limits
from chalicelib.access import AccessRule, may_use
from chalicelib.auth import Principal
from chalicelib.limits import LimitsConfig, Outcome
from chalicelib.protocol import ChatCompletionRequest, EmbeddingRequest
from chalicelib.registry import Registry

NOW = 1_800_000_030.0  # 30 s into a minute
ALICE = Principal(id="alice", username="alice@anl.gov", groups=frozenset({"lab", "big"}))
BOB = Principal(id="bob", username="bob")

CONFIG = LimitsConfig.parse(
    """{
      "default": {"requests_per_minute": 10, "tokens_per_minute": 1000},
      "groups": {"lab": {"requests_per_minute": 100}, "big": {"requests_per_minute": 500}},
      "users": {"alice@anl.gov": {"max_concurrent": 2}},
      "models": {"m": {"tokens_per_minute": 5000}},
      "completion_tokens_estimate": 100
    }"""
)


def chat(max_tokens: int | None = None) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "x" * 400}], max_tokens=max_tokens
    )


def test_user_then_most_generous_group_then_default() -> None:
    alice = CONFIG.for_user(ALICE)
    assert alice.requests_per_minute == 500  # the larger of her groups
    assert alice.tokens_per_minute == 1000  # default
    assert alice.max_concurrent == 2  # her own entry (matched by username)
    assert CONFIG.for_user(BOB).max_concurrent is None


def test_unknown_fields_in_the_config_are_refused() -> None:
    with pytest.raises(ValueError):
        LimitsConfig.parse('{"default": {"requests_per_hour": 1}}')


def test_no_limits_means_no_counters_and_no_headers() -> None:
    plan = limits.plan(LimitsConfig(), BOB, "m", chat(), NOW)
    assert plan.updates == () and plan.hold() is None
    assert limits.headers(plan, Outcome({}), NOW) == {}


def test_plan_moves_one_item_per_scope() -> None:
    plan = limits.plan(CONFIG, ALICE, "m", chat(max_tokens=50), NOW, inflight_ttl_s=900)
    keys = [u.key for u in plan.updates]
    window = int(NOW // 60)
    assert keys == [f"user#alice#{window}", "user#alice#inflight", f"model#m#{window}"]
    mine = plan.updates[0]
    assert [(c.kind, c.attr, c.limit) for c in mine.counters] == [
        ("requests", "requests", 500),
        ("tokens", "tokens:m", 1000),
    ]
    assert plan.estimate == mine.counters[1].amount > 50
    assert plan.updates[1].lease and plan.updates[1].expires_at == int(NOW) + 900
    assert plan.reset_at == (window + 1) * 60
    assert plan.hold() == {
        "estimate": plan.estimate,
        "tokens": [[f"user#alice#{window}", "tokens:m"], [f"model#m#{window}", "tokens"]],
        "inflight": "user#alice#inflight",
    }


def test_estimate_counts_prompt_and_output_budget() -> None:
    assert limits.estimate_tokens(chat(max_tokens=50), 100) == limits.estimate_tokens(chat(), 50)
    assert limits.estimate_tokens(chat(max_tokens=50), 100) > 100
    embed = EmbeddingRequest(model="e", input=["abcd" * 10])
    assert 5 < limits.estimate_tokens(embed, 10_000) < 20


def test_headers_report_the_tighter_token_limit() -> None:
    plan = limits.plan(CONFIG, ALICE, "m", chat(max_tokens=10), NOW)
    window = int(NOW // 60)
    outcome = Outcome(
        {
            f"user#alice#{window}": {"requests": 3, "tokens:m": 900},
            f"model#m#{window}": {"tokens": 1000},
        }
    )
    h = limits.headers(plan, outcome, NOW)
    assert h["x-ratelimit-limit-requests"] == "500"
    assert h["x-ratelimit-remaining-requests"] == "497"
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "100"
    assert h["x-ratelimit-reset-requests"] == h["x-ratelimit-reset-tokens"] == "30s"


def test_refusal_is_429_with_retry_after_within_what_sdks_honour() -> None:
    plan = limits.plan(CONFIG, BOB, "m", chat(max_tokens=10), NOW)
    user_item = plan.updates[0]
    refused = Outcome({user_item.key: {"requests": 10, "tokens:m": 20}}, user_item)
    exc = limits.rejection(plan, refused, NOW)
    assert exc.STATUS_CODE == 429 and exc.code == "rate_limit_exceeded"
    assert "requests per minute" in exc.message
    assert exc.headers["Retry-After"] == "30"
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"


def test_concurrency_refusal_asks_to_retry_soon() -> None:
    plan = limits.plan(CONFIG, ALICE, "m", chat(), NOW)
    inflight = plan.updates[1]
    exc = limits.rejection(plan, Outcome({inflight.key: {"inflight": 2}}, inflight), NOW)
    assert exc.headers["Retry-After"] == "1" and "concurrent" in exc.message


def test_finished_request_corrects_its_estimate() -> None:
    hold = {"estimate": 120, "tokens": [["u", "tokens:m"], ["m", "tokens"]], "inflight": None}
    assert limits.corrections(hold, 20) == {"u": {"tokens:m": -100}, "m": {"tokens": -100}}
    assert limits.corrections(hold, 120) == {}
    assert limits.used_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == 7
    assert limits.used_tokens({"total_tokens": 9}) == 9
    assert limits.used_tokens(None) == 0


def test_model_access_by_group_or_domain() -> None:
    rule = AccessRule.from_dict({"groups": ["lab"], "domains": ["ANL.gov"]})
    assert may_use(ALICE, rule)
    assert not may_use(BOB, rule)
    assert may_use(Principal(id="c", username="c", idp_domain="anl.gov"), rule)
    assert may_use(BOB, None)


def test_registry_reads_access_rules_and_refuses_conflicting_ones() -> None:
    model = {"model": "m", "endpoints": ["chat_completions"], "engine": {"kind": "x"}}
    endpoint = {"name": "a", "endpoint_id": "a", "models": [{**model, "access": {"groups": ["g"]}}]}
    reg = Registry.from_dict({"endpoints": [endpoint]})
    assert reg.access("m") == AccessRule(groups=frozenset({"g"}))
    other = {"name": "b", "endpoint_id": "b", "models": [model]}
    with pytest.raises(ValueError, match="different access rules"):
        Registry.from_dict({"endpoints": [endpoint, other]})
