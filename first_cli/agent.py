"""``first agent configure [AGENT]``: a coding agent pointed at this gateway.

Without an agent it lists the agents it knows. With one it prints ``export`` lines to paste or
``eval`` (``eval "$(first agent configure claude)"``), or appends them to a shell profile with
``--profile FILE`` (between marker lines, replaced on the next run rather than repeated). The key
is ``--key``, else ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` from the environment, else a Globus
access token from ``first token`` (the caller passes it in).

Codex reads its provider from a file instead: ``configure_codex`` writes ``config.toml`` (below).
Codex speaks only the Responses API (``wire_api = "responses"``). The config names the gateway
as a model provider and makes it the default, with the model and the key. Codex tools the
gateway does not serve are turned off: hosted web search, and the multi-agent and goal tool
groups (they come as ``namespace`` tools; the gateway serves function tools). An existing
``config.toml`` is kept as ``config.toml.bak``. The file holds the key, so it is written readable
by its owner only.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Agent:
    name: str
    description: str
    environment: Callable[[str, str, str], dict[str, str]]


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
    }


def _codex(gateway_url: str, key: str, model: str) -> dict[str, str]:
    return {}  # Codex reads config.toml (configure_codex), not the environment


AGENTS: dict[str, Agent] = {
    "claude": Agent("claude", "Claude Code (npm @anthropic-ai/claude-code)", _claude),
    "codex": Agent("codex", "Codex CLI (npm @openai/codex): writes ~/.codex/config.toml", _codex),
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


PROVIDER = "first"


def codex_home(given: str | None = None) -> Path:
    return Path(given or os.environ.get("CODEX_HOME") or Path.home() / ".codex")


def codex_config(base_url: str, model: str, key: str) -> str:
    """The config.toml text (TOML strings written as JSON strings: the same escapes)."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return (
        "# Written by `first agent configure codex`: Codex through the FIRST gateway.\n"
        f"model = {json.dumps(model)}\n"
        f"model_provider = {json.dumps(PROVIDER)}\n"
        'web_search = "disabled"\n'
        "\n"
        "[features]\n"
        "multi_agent = false\n"
        "goals = false\n"
        "\n"
        f"[model_providers.{PROVIDER}]\n"
        'name = "FIRST"\n'
        f"base_url = {json.dumps(base)}\n"
        'wire_api = "responses"\n'
        f"experimental_bearer_token = {json.dumps(key)}\n"
    )


def configure_codex(home: Path, base_url: str, model: str, key: str) -> Path:
    """Write Codex's config.toml under ``home``; its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    if path.exists():
        path.replace(home / "config.toml.bak")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(codex_config(base_url, model, key))
    return path
