"""The real Claude Code CLI (npm ``@anthropic-ai/claude-code``, installed by ``make agents``)
against the running stack (issue 21): its request is served, its streamed answer read, and it
exits 0.

It sends what it sends to Anthropic: its system prompt and 21 tools (about 20k tokens, one of
them, ``SendMessage``, with an ``allOf`` schema), streaming, ``max_tokens`` from
``CLAUDE_CODE_MAX_OUTPUT_TOKENS``. The model is ``first/tiny-agent``, the tiny random-weight
model whose output head favours its eos: it ends its turn within a few tokens, as a chat model
does (``first/tiny-chat`` writes until ``max_tokens``, which Claude Code reports as an error and
exits 1). Its home is a temporary directory and no traffic goes
anywhere but the gateway (``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic import Anthropic

from first_cli.agent import exports
from offline.background import BackgroundStack
from tests.e2e.conftest import TINY, create_key
from tests.e2e.test_durability import wait_for
from tests.e2e.test_usage import emf, usage

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CLAUDE = REPO_ROOT / ".first" / "npm" / "node_modules" / ".bin" / "claude"
AGENT = "first/tiny-agent"
# tiny-agent ends its turn with P(eos) about 0.4 a token: past 256 tokens with about 0.6**256.
MAX_OUTPUT_TOKENS = 256


def claude_environment(stack: BackgroundStack, key: str, home: Path) -> dict[str, str]:
    """What ``first agent configure claude`` prints, with a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    for line in exports("claude", f"{stack.config.api_url}/v1", key, AGENT).splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT_TOKENS),
    )
    return env


def test_claude_code_s_whole_request_is_served_and_it_exits_0(
    stack: BackgroundStack, tmp_path: Path
) -> None:
    if not CLAUDE.exists():
        pytest.skip("Claude Code is not installed: run `make agents`")
    user = f"claude-{uuid.uuid4().hex[:6]}"
    key = create_key(stack, user)
    start = int(time.time()) - 1
    home = tmp_path / "home"
    home.mkdir()

    done = subprocess.run(
        [str(CLAUDE), "-p", "Say hi", "--model", AGENT],
        env=claude_environment(stack, key, home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # Served: Claude Code's calls are counted as this key's, on the model it named, without error,
    # and the whole prompt (system prompt and 21 tools, one with allOf) was in the context.
    def served() -> dict[str, Any] | None:
        body: dict[str, Any] = usage(stack, key, start=start, group_by="model").json()
        return body if body["totals"]["requests"] >= 1 else None

    body = wait_for(served, 20, "Claude Code's requests in its key's usage")
    assert [b["model"] for b in body["data"]] == [AGENT]
    assert body["totals"]["errors"] == 0
    assert body["totals"]["prompt_tokens"] > 2048 * body["totals"]["requests"]
    # On the Messages route: the API's metrics name the route and model of each call.
    api = wait_for(
        lambda: [d for d in emf(stack, "api", "ApiLatency") if d.get("model") == AGENT],
        20,
        "the API's metrics of Claude Code's calls",
    )
    assert "/v1/messages" in {d["route"] for d in api}
    # The model ended its turn (stop_reason end_turn), so Claude Code printed its answer and
    # finished as it does against Anthropic.
    assert done.returncode == 0, f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"


def test_max_tokens_past_the_models_ceiling_is_anthropic_s_400(stack: BackgroundStack) -> None:
    # Claude Code's default 32000 would meet this on a model with a smaller ceiling: Anthropic
    # answers a max_tokens above a model's limit with a 400 invalid_request_error, so do we.
    sdk = Anthropic(base_url=stack.config.api_url, api_key=stack.api_key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk.messages.create(  # a timeout of its own: the SDK wants streaming for 40000 tokens
            model=TINY, max_tokens=40000, messages=[{"role": "user", "content": "hi"}], timeout=60
        )
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]
