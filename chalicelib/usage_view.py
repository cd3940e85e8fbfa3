"""``GET /v1/usage``: the caller's own usage; operators may ask for anyone's or everyone's.

Query parameters: ``start``, ``end`` (unix seconds, [start, end); default the last 24 h),
``group_by`` (``model`` | ``day`` | ``function``, the route; operators also ``user``), ``user`` (operators: one user's).
Anything malformed is a 400 naming its ``param``; ``user``/``group_by=user`` from a
non-operator is a 403.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError
from chalicelib.fleet import require_operator
from chalicelib.stores.usage import GROUP_BY, MAX_RANGE_S, UsageStore

DEFAULT_RANGE_S = 24 * 3600


def _seconds(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequestError(f"{name} must be unix seconds (an integer).", param=name) from exc
    if not 0 <= value < 10**11:
        raise BadRequestError(f"{name} must be unix seconds (an integer).", param=name)
    return value


def usage(
    store: UsageStore,
    principal: Principal,
    query: Mapping[str, str],
    operator_groups: list[str],
    now: float | None = None,
) -> dict[str, Any]:
    now_s = int(time.time() if now is None else now) + 1  # the end is exclusive: this second
    end = _seconds(query, "end", now_s)
    start = _seconds(query, "start", end - DEFAULT_RANGE_S)
    if end <= start:
        raise BadRequestError("end must be after start.", param="end")
    if end - start > MAX_RANGE_S:
        raise BadRequestError(
            f"The range is at most {MAX_RANGE_S} seconds (31 days); narrow start..end.",
            param="start",
        )
    group_by = query.get("group_by") or None
    if group_by is not None and group_by not in GROUP_BY:
        raise BadRequestError(f"group_by must be one of {', '.join(GROUP_BY)}.", param="group_by")
    user = query.get("user") or None
    owner: str | None = principal.id
    if group_by == "user" or (user is not None and user != principal.id):
        require_operator(principal, operator_groups)
        owner = user
    return store.summary(start, end, group_by, owner=owner)
