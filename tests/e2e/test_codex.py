"""Codex CLI (npm ``@openai/codex``, installed by ``make agents`` under ``.first/npm``) set up as
a user sets it up (``first agent configure codex`` writes its ``config.toml`` in a temporary
``CODEX_HOME``) answers a prompt through the gateway's Responses API (issue 20):
``codex exec --skip-git-repo-check`` exits 0, and its calls are counted as Responses calls of
its key, without error.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from first_cli.main import main as first_main
from offline.background import BackgroundStack
from tests.e2e.conftest import TINY, create_key
from tests.e2e.test_durability import wait_for
from tests.e2e.test_usage import usage

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CODEX = REPO_ROOT / ".first" / "npm" / "node_modules" / ".bin" / "codex"
TINY_AGENT = "first/tiny-agent"
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"greeting": {"type": "string", "enum": ["hi", "hello"]}},
    "required": ["greeting"],
    "additionalProperties": False,
}


def _codex_exec(
    stack: BackgroundStack, tmp_path: Path, model: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], str, int]:
    """``codex exec`` configured by ``first agent configure codex`` for a new key: the run, the
    key, and when it started (for the key's usage)."""
    if not CODEX.exists():
        pytest.skip("Codex CLI is not installed: run `make agents`")
    user = f"codex-{uuid.uuid4().hex[:6]}"
    key = create_key(stack, user)
    start = int(time.time()) - 1
    home = tmp_path / "codex-home"
    configured = first_main(
        [
            "agent", "configure", "codex", "--model", model, "--gateway", stack.config.api_url,
            "--key", key, "--codex-home", str(home),
        ]
    )  # fmt: skip
    assert configured == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), HOME=str(tmp_path))
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    return done, key, start


def _served_as_responses(stack: BackgroundStack, key: str, start: int) -> None:
    def served() -> dict[str, Any] | None:
        body: dict[str, Any] = usage(stack, key, start=start, group_by="function").json()
        return body if body["totals"]["requests"] >= 1 else None

    body = wait_for(served, 20, "Codex's requests in its key's usage")
    assert [b["function"] for b in body["data"]] == ["responses"]
    assert body["totals"]["errors"] == 0


def test_codex_exec_completes_against_the_gateway(stack: BackgroundStack, tmp_path: Path) -> None:
    """As a user runs it: a plain prompt, on the offline model that ends its turn
    (first/tiny-agent; first/tiny-chat never writes its end token, and Codex reports an answer
    cut at the output ceiling as an error, as it would OpenAI's)."""
    _, key, start = _codex_exec(stack, tmp_path, TINY_AGENT, "say hi")
    _served_as_responses(stack, key, start)


def test_codex_exec_answers_in_its_output_schema(stack: BackgroundStack, tmp_path: Path) -> None:
    """Codex's own --output-schema (the Responses text.format) is enforced by the engine's
    constrained decoding, which also ends the answer where the schema does."""
    schema = tmp_path / "answer.schema.json"
    schema.write_text(json.dumps(ANSWER_SCHEMA))
    done, key, start = _codex_exec(stack, tmp_path, TINY, "--output-schema", str(schema), "say hi")
    _served_as_responses(stack, key, start)
    # Its last message is the structured answer (codex exec prints it on stdout).
    assert json.loads(done.stdout.strip().splitlines()[-1]) in (
        {"greeting": "hi"},
        {"greeting": "hello"},
    )
