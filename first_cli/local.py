"""``first local endpoint stop|start NAME``: take a local "cluster" of the running stack down, and
bring it back (demos and tests of failover use it).

The running stack's supervisor acts on a request file in ``$FIRST_HOME/control/`` and records
the result in ``$FIRST_HOME/stack.json``; this waits until it has.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path


class StackControlError(Exception):
    pass


def _state(home: Path) -> dict[str, object]:
    try:
        return json.loads((home / "stack.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise StackControlError(f"no running stack under {home} (make up?)") from exc


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1):  # noqa: S310 - loopback
            return True
    except (urllib.error.URLError, OSError):
        return False


def endpoint(home: Path, verb: str, name: str, timeout_s: float = 180.0) -> str:
    """Stop or start the local endpoint ``name``; a line saying what happened."""
    state = _state(home)
    urls = state.get("compute_urls") or {}
    assert isinstance(urls, dict)
    if name not in urls:
        raise StackControlError(f"no local endpoint {name!r}; the stack has {sorted(urls)}")
    child = f"compute-{name}"
    control = home / "control"
    control.mkdir(exist_ok=True)
    (control / f"{verb}-{child}").touch()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _state(home)
        held = child in (state.get("held") or [])  # type: ignore[operator]
        if verb == "stop" and held:
            return f"{name} stopped"
        if verb == "start" and not held and _answers(str(urls[name])):
            return f"{name} started"
        time.sleep(0.2)
    raise StackControlError(f"the stack did not {verb} {name} within {timeout_s:.0f} s")
