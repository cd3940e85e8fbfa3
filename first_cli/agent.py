"""``first agent configure codex``: point Codex CLI at the gateway, as a user would by hand.

Codex speaks only the Responses API (``wire_api = "responses"``). The config names the gateway
as a model provider and makes it the default, with the model and the key (``--key``, else
``OPENAI_API_KEY``, else the Globus token of ``first token``). Codex tools the gateway does not
serve are turned off: hosted web search, and the multi-agent and goal tool groups (they come as
``namespace`` tools; the gateway serves function tools). An existing ``config.toml`` is kept as
``config.toml.bak``. The file holds the key, so it is written readable by its owner only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
