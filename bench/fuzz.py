"""Fuzz every HTTP route from ``GET /openapi.json`` with schemathesis, with a key and without.

    python -m bench.fuzz [--examples 100] [--seed N]

For every operation of the document, schemathesis generates valid (positive) and invalid
(negative) requests; each is sent with the fuzz user's key and again without one. What must hold
(``problems``): no 5xx, every 4xx an OpenAI error (``{"error": {"message", "type", "param",
"code"}}``, JSON; Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on the Messages
API's routes), and an answer within ``TIMEOUT_S`` (no hang). Prints the count of answers per
route and status, and every problem with a curl line to reproduce it. Uses the ``make up`` stack,
or starts one; the fuzz user's key is created with ``first keys create``. ``run`` is what the
bounded e2e test (tests/e2e/test_fuzz_http.py) calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from chalicelib.protocol.messages import speaks_anthropic

TIMEOUT_S = 15.0
ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class Report:
    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (op, auth, status)
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    elapsed_s: float = 0.0

    def table(self) -> str:
        rows = [f"{'route':<44} {'auth':<6} {'status':>6} {'count':>6}"]
        rows += [
            f"{op:<44} {auth:<6} {status:>6} {n:>6}"
            for (op, auth, status), n in sorted(self.counts.items())
        ]
        return "\n".join(rows)


def problems(response: schemathesis.Response) -> list[str]:
    """What is wrong with one answer: a 5xx, or a 4xx that is not an OpenAI error."""
    status = response.status_code
    if status >= 500:
        return [f"{status}: {response.text[:300]}"]
    if status < 400:
        return []
    content_type = ",".join(response.headers.get("content-type", []))  # lowercased names
    if not content_type.startswith("application/json"):
        return [f"{status} with Content-Type {content_type!r}"]
    try:
        body = response.json()
    except ValueError:
        return [f"{status} whose body is not JSON: {response.text[:200]!r}"]
    error = body.get("error") if isinstance(body, dict) else None
    if speaks_anthropic(urlsplit(response.request.url or "").path):
        return _anthropic_problems(status, body, response.text)
    if not isinstance(error, dict) or not ERROR_KEYS <= set(error):
        return [f"{status} not OpenAI-shaped: {response.text[:300]}"]
    wrong = [
        k
        for k, ok in (
            ("message", isinstance(error["message"], str) and error["message"]),
            ("type", isinstance(error["type"], str)),
            ("param", error["param"] is None or isinstance(error["param"], str)),
            ("code", error["code"] is None or isinstance(error["code"], str)),
        )
        if not ok
    ]
    return [f"{status} with a wrong {', '.join(wrong)}: {response.text[:300]}"] if wrong else []


def _anthropic_problems(status: int, body: Any, text: str) -> list[str]:
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or body.get("type") != "error"
        or not isinstance(error, dict)
        or not isinstance(error.get("type"), str)
        or not (isinstance(error.get("message"), str) and error["message"])
    ):
        return [f"{status} not Anthropic-shaped: {text[:300]}"]
    return []


def run(
    base_url: str,
    keys: dict[str, str | None],
    *,
    examples: int,
    seed: int | None = None,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    exclude: tuple[str, ...] = (),
) -> Report:
    """Fuzz every operation ``examples`` times per key (label → key, None: no key) and mode."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=TIMEOUT_S)
    report = Report()
    start = time.perf_counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        if name in exclude:
            continue
        for label, key in keys.items():
            # Without a key every request is a 401 before its body is read: invalid bodies
            # add nothing there. (Negative cases with a key include schemathesis' own
            # auth mutations: the key left out.)
            for mode in modes if key else (GenerationMode.POSITIVE,):
                _fuzz_one(
                    operation, name, label, key, mode, examples, seed, base_url, session, report
                )
    report.elapsed_s = time.perf_counter() - start
    return report


def _fuzz_one(
    operation: Any,
    name: str,
    label: str,
    key: str | None,
    mode: GenerationMode,
    examples: int,
    seed: int | None,
    base_url: str,
    session: requests.Session,
    report: Report,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        if case.headers:
            # The key under test is the only credential sent (or none at all).
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        report.requests += 1
        try:
            response = case.call(
                base_url=base_url, session=session, headers=headers, timeout=TIMEOUT_S
            )
        except requests.RequestException as exc:  # a hang (timeout) or a dropped connection
            report.counts[(name, label, 0)] += 1
            report.problems.append(f"{name} [{label}, {mode.value}]: {type(exc).__name__}: {exc}")
            return
        report.counts[(name, label, response.status_code)] += 1
        for problem in problems(response):
            curl = case.as_curl_command(headers=headers)
            report.problems.append(f"{name} [{label}, {mode.value}]: {problem}\n    {curl}")

    if seed is not None:
        fuzz = seed_of(seed)(fuzz)
    # Unsatisfiable: nothing to make invalid (no parameters, no body); the positive run covers it.
    with contextlib.suppress(Unsatisfiable):
        fuzz()


def seed_of(seed: int) -> Any:
    from hypothesis import seed as hypothesis_seed

    return hypothesis_seed(seed)


def create_key(env: dict[str, str], user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "first_cli.main", "keys", "create", "--user", user],
        env={**env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    import os

    from bench.common import local_stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="per operation, key and mode")
    parser.add_argument("--seed", type=int, default=None, help="random unless given")
    args = parser.parse_args()
    with local_stack() as env:
        key = create_key({**os.environ, **env}, "fuzz-bench")
        base_url = env["OPENAI_BASE_URL"].removesuffix("/v1")
        report = run(base_url, {"key": key, "none": None}, examples=args.examples, seed=args.seed)
    print(report.table())
    statuses: Counter[int] = Counter()
    for (_, _, status), n in report.counts.items():
        statuses[status] += n
    print(
        json.dumps(
            {
                "requests": report.requests,
                "elapsed_s": round(report.elapsed_s, 1),
                "by_status": dict(sorted(statuses.items())),
                "problems": len(report.problems),
            }
        )
    )
    for problem in report.problems:
        print(problem)


if __name__ == "__main__":
    main()
