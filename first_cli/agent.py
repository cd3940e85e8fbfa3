"""``first agent configure [AGENT]``: the environment a coding agent needs to use this gateway.

Without an agent it lists the agents it knows. With one it prints ``export`` lines to paste or
``eval`` (``eval "$(first agent configure claude)"``), or appends them to a shell profile with
``--profile FILE`` (between marker lines, replaced on the next run rather than repeated). The key
is ``--key``, else ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` from the environment, else a Globus
access token from ``first token`` (the caller passes it in).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Agent:
    name: str
    description: str
    environment: Callable[[str, str, str], dict[str, str]]


# Claude Code asks for 32000 output tokens unless told otherwise: past the ceiling of most models
# a site serves (a 400, as Anthropic answers a max_tokens above a model's limit). Its own prompt
# (system prompt and 21 tools) is about 20k tokens, so prompt and answer fit a 32k context.
CLAUDE_MAX_OUTPUT_TOKENS = 4096


def _claude(gateway_url: str, key: str, model: str) -> dict[str, str]:
    # Claude Code appends /v1/messages to ANTHROPIC_BASE_URL and sends ANTHROPIC_AUTH_TOKEN as
    # a bearer token; its background model (titles, summaries) is the same model here, and no
    # traffic goes anywhere but the gateway.
    return {
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_AUTH_TOKEN": key,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(CLAUDE_MAX_OUTPUT_TOKENS),
    }


AGENTS: dict[str, Agent] = {
    "claude": Agent("claude", "Claude Code (npm @anthropic-ai/claude-code)", _claude),
}
BEGIN = "# >>> first agent configure {name} >>>"
END = "# <<< first agent configure {name} <<<"


def gateway_root(url: str) -> str:
    """The gateway's root URL (``OPENAI_BASE_URL`` ends in ``/v1``; Anthropic's clients add it)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def listing() -> str:
    return "".join(f"{a.name:<10} {a.description}\n" for a in AGENTS.values())


def exports(name: str, gateway_url: str, key: str, model: str) -> str:
    """The ``export`` lines for agent ``name`` (a KeyError for an agent not in ``AGENTS``)."""
    env = AGENTS[name].environment(gateway_root(gateway_url), key, model)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def write_profile(path: Path, name: str, text: str) -> None:
    """Put ``text`` in ``path`` between this agent's markers, replacing an earlier block."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    old = path.read_text() if path.exists() else ""
    lines = old.splitlines(keepends=True)
    if begin + "\n" in lines and end + "\n" in lines:
        start, stop = lines.index(begin + "\n"), lines.index(end + "\n")
        lines = lines[:start] + lines[stop + 1 :]
    kept = "".join(lines)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    path.write_text(f"{kept}{begin}\n{text}{end}\n")
