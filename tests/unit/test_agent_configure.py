"""``first agent configure``: the environment Claude Code needs for this gateway."""

from __future__ import annotations

import stat
import subprocess
import tomllib
from pathlib import Path

from first_cli import agent
from first_cli.main import main


def test_claude_s_environment_points_at_the_gateway_root_with_the_key() -> None:
    text = agent.exports("claude", "http://gw.example/v1/", "k3y'x", "first/tiny-chat")
    env = dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines())
    assert env["ANTHROPIC_BASE_URL"] == "http://gw.example"
    assert env["ANTHROPIC_MODEL"] == "first/tiny-chat"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    # Quoted for the shell: what a shell reads back is the key itself.
    shown = subprocess.run(
        ["bash", "-c", f'{text}printf %s "$ANTHROPIC_AUTH_TOKEN"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == "k3y'x"


def test_writing_a_profile_twice_leaves_one_block(tmp_path: Path) -> None:
    profile = tmp_path / ".bashrc"
    profile.write_text("alias ll='ls -l'")
    for key in ("old", "new"):
        agent.write_profile(profile, "claude", agent.exports("claude", "http://gw", key, "m"))
    text = profile.read_text()
    assert text.startswith("alias ll='ls -l'\n")
    assert text.count(agent.BEGIN.format(name="claude")) == 1
    assert "ANTHROPIC_AUTH_TOKEN=new" in text and "=old" not in text


def test_the_listing_names_claude() -> None:
    assert agent.listing().startswith("claude ")


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
