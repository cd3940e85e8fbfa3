"""The offline scheduler runs scheduled functions at their rate, as EventBridge would; the app
registers the hourly reply-queue sweep; the sweeper's idle rule."""

from __future__ import annotations

from typing import Any

import pytest
from chalice.app import Chalice, CloudWatchEvent, Cron, Rate

from chalicelib.stores.replies import LAST_USED_TAG
from chalicelib.stores.sweeper import is_idle, last_used_s
from offline.scheduler import Scheduler, jobs_of, rate_s


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_rates_in_seconds_and_cron_is_refused() -> None:
    assert rate_s(Rate(1, unit=Rate.HOURS)) == 3600
    assert rate_s(Rate(5, unit=Rate.MINUTES)) == 300
    assert rate_s("rate(2 days)") == 2 * 86400
    with pytest.raises(ValueError, match="only rate"):
        rate_s(Cron(0, 12, "*", "*", "?", "*"))


def test_each_function_runs_at_start_then_at_its_rate_and_a_failure_is_retried() -> None:
    app = Chalice(app_name="scheduler-test")
    seen: list[tuple[str, str]] = []

    @app.schedule(Rate(1, unit=Rate.MINUTES))
    def every_minute(event: CloudWatchEvent) -> dict[str, Any]:
        seen.append(("minute", event.detail_type))
        return {"ok": True}

    @app.schedule(Rate(1, unit=Rate.HOURS))
    def every_hour(event: CloudWatchEvent) -> None:
        seen.append(("hour", event.source))
        raise RuntimeError("boom")

    clock = Clock()
    scheduler = Scheduler(jobs_of(app), clock=clock)
    first = scheduler.run_due()
    assert first["every_minute"] == {"ok": True}
    assert first["every_hour"] == {"error": "RuntimeError: boom"}
    assert seen == [("minute", "Scheduled Event"), ("hour", "aws.events")]
    clock.now_s += 59
    assert scheduler.run_due() == {}
    clock.now_s += 1
    assert set(scheduler.run_due()) == {"every_minute"}
    clock.now_s += 3600
    assert set(scheduler.run_due()) == {"every_minute", "every_hour"}


def test_the_app_sweeps_reply_queues_every_hour() -> None:
    from app import app

    (job,) = [j for j in jobs_of(app) if j.name == "sweep_reply_queues"]
    assert job.every_s == 3600


@pytest.mark.parametrize(
    ("tags", "created", "messages", "idle"),
    [
        ({LAST_USED_TAG: "1000"}, "500", 0, True),  # touched a day and more ago
        ({LAST_USED_TAG: "90000"}, "500", 0, False),  # touched within the day
        ({}, "500", 0, True),  # made before tags: its creation time counts
        ({}, "90000", 0, False),
        ({LAST_USED_TAG: "not-a-number"}, "90000", 0, False),
        ({LAST_USED_TAG: "1000"}, "500", 1, False),  # holds a notice: in use
    ],
)
def test_idle_means_untouched_for_the_idle_time_and_empty(
    tags: dict[str, str], created: str, messages: int, idle: bool
) -> None:
    last = last_used_s(tags, {"CreatedTimestamp": created})
    assert is_idle(1000 + 86400, last, messages, 86400) is idle
