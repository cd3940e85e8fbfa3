"""``first agent configure codex`` writes the config Codex reads (checked with a TOML parser)."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from first_cli.main import main


def test_configure_codex_writes_the_gateway_as_a_responses_provider(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text('model = "theirs"\n')
    argv = ["agent", "configure", "codex", "--model", "first/tiny-chat"]
    argv += ["--gateway", "http://127.0.0.1:9/", "--key", 'k"ey', "--codex-home", str(home)]
    assert main(argv) == 0
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["model"] == "first/tiny-chat" and config["model_provider"] == "first"
    provider = config["model_providers"]["first"]
    assert provider["base_url"] == "http://127.0.0.1:9/v1"
    assert provider["wire_api"] == "responses" and provider["experimental_bearer_token"] == 'k"ey'
    assert config["web_search"] == "disabled"
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    assert (home / "config.toml.bak").read_text() == 'model = "theirs"\n'
