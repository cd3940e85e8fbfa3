"""The offline stack's EventBridge: runs the app's ``@app.schedule`` functions at their rate.

    python -m offline.scheduler          run every scheduled function now, then at its rate
    python -m offline.scheduler --once   run each once; print {"scheduled_function", "result"}

On AWS, ``chalice package`` turns each ``@app.schedule(Rate(...))`` into an EventBridge rule that
invokes its own Lambda function with a "Scheduled Event". Here the same handlers of the real app
(``app.handler_map``, Chalice's wrapped handlers, so the event goes through ``CloudWatchEvent``
as on Lambda) are called in this process. Only ``Rate`` schedules are supported: a ``Cron`` one
is refused at start rather than silently never run. A function that raises is logged with its
name and runs again at its next time, as EventBridge would invoke it again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalice.app import Chalice, Rate, ScheduledEventConfig

from chalicelib.logs import get_logger

_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^rate\((\d+) (minute|hour|day)s?\)$")
logger = get_logger("first-scheduler")


def rate_s(expression: object) -> float:
    """Seconds between runs of a ``Rate`` (or its ``rate(N unit)`` string)."""
    text = expression.to_string() if isinstance(expression, Rate) else str(expression)
    match = _RATE.match(text.strip())
    if match is None:
        raise ValueError(f"only rate(...) schedules run offline, not {text!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def scheduled_event(name: str, region: str = "us-east-1") -> dict[str, Any]:
    """What EventBridge sends a scheduled function."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:000000000000:rule/{name}"],
        "detail": {},
    }


@dataclass
class Job:
    name: str
    every_s: float
    handler: Callable[[dict[str, Any], Any], Any]
    due_s: float = 0.0


def jobs_of(app: Chalice) -> list[Job]:
    return [
        Job(source.name, rate_s(source.schedule_expression), app.handler_map[source.name])
        for source in app.event_sources
        if isinstance(source, ScheduledEventConfig)
    ]


class Scheduler:
    def __init__(self, jobs: list[Job], clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self._clock = clock
        start = clock()
        for job in jobs:
            job.due_s = start  # first run at start, so a fresh stack is swept at once

    def run_due(self) -> dict[str, Any]:
        """Run each job whose time has come; its result (or ``{"error": ...}``) by name."""
        results: dict[str, Any] = {}
        now = self._clock()
        for job in self.jobs:
            if now < job.due_s:
                continue
            job.due_s = now + job.every_s
            try:
                results[job.name] = job.handler(scheduled_event(job.name), None)
            except Exception as exc:  # noqa: BLE001 - logged; runs again at its next time
                logger.exception("scheduled function failed", extra={"function": job.name})
                results[job.name] = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                logger.info("scheduled function ran", extra={"function": job.name})
        return results

    def run_forever(self, stopping: threading.Event, tick_s: float = 1.0) -> None:
        while not stopping.is_set():
            self.run_due()
            stopping.wait(tick_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run each function once and exit")
    args = parser.parse_args(argv)
    from app import app

    scheduler = Scheduler(jobs_of(app))
    if args.once:
        results = scheduler.run_due()
        for name, result in results.items():
            print(json.dumps({"scheduled_function": name, "result": result}), flush=True)
        failed = any(isinstance(r, dict) and "error" in r for r in results.values())
        return 1 if failed else 0
    scheduler.run_forever(threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
