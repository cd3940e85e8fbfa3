"""schemathesis against ``GET /openapi.json`` on the running stack, with a key and without: no
5xx, every 4xx an OpenAI error, every answer within the per-request timeout.

A bounded run (a few valid and invalid requests per route, key and mode; reproducible); the
longer, random run is ``python -m bench.fuzz`` (its counts in docs/hardening.md). The key is a
user of its own, so what the fuzz creates (files of its own) touches no other test's data.
"""

from __future__ import annotations

import pytest
import requests

from bench.fuzz import run
from offline.background import BackgroundStack
from tests.e2e.conftest import create_key

pytestmark = pytest.mark.e2e

EXAMPLES = 5


def test_every_route_from_the_openapi_document_answers_fuzz_without_5xx_or_non_openai_errors(
    stack: BackgroundStack,
) -> None:
    key = create_key(stack, "fuzz")
    report = run(stack.config.api_url, {"key": key, "none": None}, examples=EXAMPLES)
    assert report.problems == [], "\n".join(report.problems)
    routes = {op for op, _, _ in report.counts}
    documented = requests.get(f"{stack.config.api_url}/openapi.json", timeout=10).json()["paths"]
    # schemathesis leaves out the route that served the document (tests/unit/test_openapi.py).
    expected = {f"{m.upper()} {p}" for p, ops in documented.items() for m in ops}
    assert routes == expected - {"GET /openapi.json"}
    # Both sides were exercised: the key got past authentication, its absence did not.
    statuses = {(auth, status) for _, auth, status in report.counts}
    assert ("none", 401) in statuses
    assert any(auth == "key" and status not in (401, 0) for auth, status in statuses)
