"""Where a task goes next, decided in pure code over plain values; the poller and the batch
worker act on the decision in their own thin loops.

The router ranks the endpoints serving a model (``router.rank``: offline ones and open circuits
left out, the best first). On that ranking, ``plan`` answers one of three things:

- ``Try``: take a slot on the first of these endpoints that has one (the endpoint the task is
  held on, where its earlier try still runs, first; endpoints that failed it already left out);
- ``Wait``: nothing serving the model is online (the stack starting, an endpoint restarting),
  and there is still time to wait for one; or (``slot_wait``) every endpoint tried was full;
- ``Fail``: give up, with the reason a client may read (no endpoint names beyond the
  operator's, no remote detail).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from chalicelib.router import Candidate


@dataclass(frozen=True)
class Try:
    """Take a slot on the first of ``candidates`` that has one, in this order."""

    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Wait:
    """Wait, then plan again: for an endpoint to come ``online``, or for a free ``slot``."""

    until: Literal["online", "slot"]


@dataclass(frozen=True)
class Fail:
    """No endpoint can take the task: ``reason`` says why."""

    reason: str


Step = Try | Wait | Fail


def plan(
    ranked: Sequence[Candidate],
    *,
    model: str,
    failed_on: Mapping[str, str],
    held: str | None,
    now_s: float,
    online_wait_until_s: float,
) -> Step:
    """The next step for a task of ``model`` over the router's ranking ``ranked``.

    ``failed_on``: the endpoints this task already failed on (name → error type), not tried
    again; ``held``: the endpoint the task is held on, tried first; ``online_wait_until_s``:
    until when (on the clock of ``now_s``) to wait for an endpoint to come online, as long as
    none has failed the task yet (a failure is an answer: fail over, or give up).
    """
    usable = [c for c in ranked if c[0].name not in failed_on]
    usable.sort(key=lambda c: c[0].name != held)
    if usable:
        return Try(tuple(usable))
    if not failed_on and now_s < online_wait_until_s:
        return Wait("online")
    return Fail(
        f"no endpoint can run {model} now (offline, circuit open, or failed: {dict(failed_on)})"
    )


def slot_wait(*, now_s: float, deadline_s: float) -> Wait | Fail:
    """Every endpoint tried was full (or the task waits its turn for a slot): wait for a slot
    until ``deadline_s``, then give up."""
    if now_s > deadline_s:
        return Fail("every endpoint serving the model stayed full")
    return Wait("slot")
