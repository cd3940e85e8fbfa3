"""Rate limits and fair share, decided in pure code: which counters a request moves, by how much,
against which limits; the headers and the 429 that follow. ``stores/limits.py`` acts on it.

The configuration (JSON; docs/auth.md) sets limits per user, per group, per model::

    {
      "default": {"requests_per_minute": 60, "tokens_per_minute": 100000, "max_concurrent": 8},
      "groups":  {"<group id>": {"requests_per_minute": 600}},
      "users":   {"<principal id or username>": {"max_concurrent": 32}},
      "models":  {"<model id>": {"tokens_per_minute": 2000000}},
      "completion_tokens_estimate": 256
    }

A user's limit for each field comes from their ``users`` entry, else the most generous of their
groups that set it, else ``default``; unset everywhere means unlimited (and no counter at all).
Per user: requests per minute, tokens per minute per model, concurrent requests in flight. Per
model: tokens per minute over all users. Windows are fixed minutes.

Counters admit while below their limit (``used < limit``), so one large request may overshoot a
token budget rather than never fit; the next ones wait for the window to roll. Tokens are charged
an estimate at admission (prompt size + ``max_tokens``) and corrected to the real usage when the
request finishes (``release``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.auth.principal import Principal
from chalicelib.errors import RateLimitError
from chalicelib.protocol.common import GatewayRequest, SamplingFields

WINDOW_S = 60
# Clients (the OpenAI SDKs) honour Retry-After only up to this.
MAX_RETRY_AFTER_S = 120

Kind = Literal["requests", "tokens", "concurrent"]


class UserLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    max_concurrent: int | None = Field(default=None, ge=0)


class ModelLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_minute: int | None = Field(default=None, ge=0)


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: UserLimits = UserLimits()
    groups: dict[str, UserLimits] = Field(default_factory=dict)
    users: dict[str, UserLimits] = Field(default_factory=dict)
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    completion_tokens_estimate: int = Field(default=256, ge=0)

    @classmethod
    def parse(cls, text: str) -> LimitsConfig:
        return cls.model_validate(json.loads(text))

    def for_user(self, principal: Principal) -> UserLimits:
        own = self.users.get(principal.id) or self.users.get(principal.username)
        groups = [self.groups[g] for g in sorted(principal.groups) if g in self.groups]
        values: dict[str, int | None] = {}
        for name in UserLimits.model_fields:
            value = getattr(own, name) if own else None
            if value is None:
                set_by_groups = [v for g in groups if (v := getattr(g, name)) is not None]
                value = max(set_by_groups) if set_by_groups else getattr(self.default, name)
            values[name] = value
        return UserLimits(**values)


@dataclass(frozen=True)
class Counter:
    kind: Kind
    attr: str
    amount: int
    limit: int


@dataclass(frozen=True)
class ItemUpdate:
    """One DynamoDB item, one conditional ``ADD`` of all its counters."""

    key: str
    counters: tuple[Counter, ...]
    expires_at: int
    # The in-flight counter: when its TTL has passed (nobody admitted for a while, so anything
    # it still counts was never released), it is reset instead of trusted.
    lease: bool = False


@dataclass(frozen=True)
class Plan:
    updates: tuple[ItemUpdate, ...]
    estimate: int
    reset_at: float

    def hold(self) -> dict[str, Any] | None:
        """What the request record keeps so whoever finishes it can ``release`` the counters."""
        tokens = [[u.key, c.attr] for u in self.updates for c in u.counters if c.kind == "tokens"]
        inflight = next((u.key for u in self.updates if u.lease), None)
        if not tokens and inflight is None:
            return None
        return {"estimate": self.estimate, "tokens": tokens, "inflight": inflight}


def estimate_tokens(req: GatewayRequest, completion_default: int) -> int:
    """A cheap upper-ish estimate: ~4 characters a token for the input, plus the output budget."""
    body = req.engine_body()
    source = body.get("messages", body.get("prompt", body.get("input", "")))
    prompt = len(json.dumps(source, separators=(",", ":"))) // 4 + 1
    if not isinstance(req, SamplingFields):
        return prompt
    budget = getattr(req, "max_completion_tokens", None) or req.max_tokens or completion_default
    return prompt + budget * (req.n or 1)


def plan(
    config: LimitsConfig,
    principal: Principal,
    model: str,
    req: GatewayRequest,
    now: float,
    *,
    inflight_ttl_s: int = 900,
) -> Plan:
    user = config.for_user(principal)
    model_tpm = config.models[model].tokens_per_minute if model in config.models else None
    window = int(now // WINDOW_S)
    reset_at = float((window + 1) * WINDOW_S)
    # Old windows are never read again; the TTL only tidies them away.
    window_expiry = int(reset_at) + WINDOW_S
    counts_tokens = user.tokens_per_minute is not None or model_tpm is not None
    estimate = estimate_tokens(req, config.completion_tokens_estimate) if counts_tokens else 0
    updates: list[ItemUpdate] = []
    mine: list[Counter] = []
    if user.requests_per_minute is not None:
        mine.append(Counter("requests", "requests", 1, user.requests_per_minute))
    if user.tokens_per_minute is not None:
        mine.append(Counter("tokens", f"tokens:{model}", estimate, user.tokens_per_minute))
    if mine:
        updates.append(ItemUpdate(f"user#{principal.id}#{window}", tuple(mine), window_expiry))
    if user.max_concurrent is not None:
        concurrent = Counter("concurrent", "inflight", 1, user.max_concurrent)
        expires = int(now) + inflight_ttl_s
        updates.append(ItemUpdate(f"user#{principal.id}#inflight", (concurrent,), expires, True))
    if model_tpm is not None:
        tokens = Counter("tokens", "tokens", estimate, model_tpm)
        updates.append(ItemUpdate(f"model#{model}#{window}", (tokens,), window_expiry))
    return Plan(tuple(updates), estimate, reset_at)


@dataclass(frozen=True)
class Outcome:
    """What the store saw: each item's counter values (after the update, or as they stood when
    the condition failed) and the item that refused, if any."""

    counts: dict[str, dict[str, int]]
    refused: ItemUpdate | None = None


def _duration(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".") + "s"


def headers(plan: Plan, outcome: Outcome, now: float) -> dict[str, str]:
    """``x-ratelimit-*`` as OpenAI sends them; for tokens, the tighter of user and model."""
    out: dict[str, str] = {}
    reset = _duration(plan.reset_at - now)
    seen: dict[str, list[tuple[int, int]]] = {"requests": [], "tokens": []}
    for update in plan.updates:
        values = outcome.counts.get(update.key, {})
        for c in update.counters:
            if c.kind in seen:
                seen[c.kind].append((c.limit, max(0, c.limit - values.get(c.attr, 0))))
    for kind, pairs in seen.items():
        if pairs:
            limit, remaining = min(pairs, key=lambda p: p[1])
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            out[f"x-ratelimit-reset-{kind}"] = reset
    return out


def exceeded(update: ItemUpdate, values: dict[str, int]) -> Counter:
    """Which of the item's counters refused (its value had reached the limit)."""
    for c in update.counters:
        if values.get(c.attr, 0) >= c.limit:
            return c
    return update.counters[0]


def rejection(plan: Plan, outcome: Outcome, now: float) -> RateLimitError:
    assert outcome.refused is not None
    counter = exceeded(outcome.refused, outcome.counts.get(outcome.refused.key, {}))
    if counter.kind == "concurrent":
        # A slot frees when any running request finishes: try again soon.
        retry_after = 1
        what = f"concurrent requests (limit {counter.limit})"
    else:
        retry_after = max(1, math.ceil(plan.reset_at - now))
        per = "tokens" if counter.kind == "tokens" else "requests"
        scope = " for this model" if outcome.refused.key.startswith("model#") else ""
        what = f"{per} per minute{scope} (limit {counter.limit})"
    retry_after = min(retry_after, MAX_RETRY_AFTER_S)
    return RateLimitError(
        f"Rate limit reached for {what}. Please try again in {retry_after}s.",
        headers={**headers(plan, outcome, now), "Retry-After": str(retry_after)},
    )


def used_tokens(usage: dict[str, Any] | None) -> int:
    """Tokens a finished request really used (0 when it failed without usage)."""
    usage = usage or {}
    total = usage.get("total_tokens")
    if total is None:
        total = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return int(total)


def corrections(hold: dict[str, Any], used: int) -> dict[str, dict[str, int]]:
    """Per item, what to add to its token counters: real usage minus the estimate charged."""
    delta = used - int(hold.get("estimate") or 0)
    out: dict[str, dict[str, int]] = {}
    if delta:
        for key, attr in hold.get("tokens") or []:
            out.setdefault(key, {})[attr] = delta
    return out


def stream_slot(principal_id: str, limit: int, now: float, ttl_s: int) -> Plan:
    """One of the user's concurrent streams (``Settings.stream_max_per_user``): a lease counter
    like ``max_concurrent``'s, released by whoever finishes the request (``hold()["streams"]``)."""
    update = ItemUpdate(
        f"user#{principal_id}#streams",
        (Counter("concurrent", "inflight", 1, limit),),
        int(now) + ttl_s,
        lease=True,
    )
    return Plan((update,), 0, now)


def streams_refused(limit: int) -> RateLimitError:
    return RateLimitError(
        f"Too many concurrent streams: this user already has {limit} in flight (the limit). "
        "Please try again when one finishes.",
        headers={"Retry-After": "1"},
    )
