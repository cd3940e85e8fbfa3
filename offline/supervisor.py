"""Keeps the offline stack's processes alive: what dies is restarted, the rest keeps running.

Only Ctrl-C / ``make down`` stops the stack. A process that exits (kill -9, a crash) is started
again after a backoff (1, 2, 4 … 30 s) that resets once it has stayed up for a minute, and each
exit and restart is logged. When the local AWS endpoint itself is restarted its state is gone
(moto keeps it in memory), so the stack's ``on_restart`` hook redeploys the resources.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BACKOFF_MAX_S = 30.0
# A process that stayed up this long counts as healthy again: its next crash restarts fast.
STABLE_S = 60.0


def backoff_s(crashes_in_a_row: int) -> float:
    """Seconds to wait before the n-th restart in a row (n ≥ 1): 1, 2, 4 … 30."""
    return float(min(BACKOFF_MAX_S, 2 ** max(0, crashes_in_a_row - 1)))


@dataclass
class Child:
    name: str
    spawn: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    crashes_in_a_row: int = 0
    restarts: int = 0
    restart_at: float | None = None
    # Taken down on purpose (`first local endpoint stop`): not restarted until released.
    held: bool = False


class Supervisor:
    def __init__(
        self,
        log: Callable[[str], None],
        on_restart: Callable[[Child], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children: dict[str, Child] = {}
        self._log = log
        self._on_restart = on_restart
        self._clock = clock

    def add(self, name: str, spawn: Callable[[], subprocess.Popen[bytes]]) -> Child:
        child = Child(name, spawn, spawn(), started_at=self._clock())
        self.children[name] = child
        return child

    def pids(self) -> dict[str, int]:
        return {name: c.proc.pid for name, c in self.children.items() if not c.held}

    def held(self) -> list[str]:
        return sorted(name for name, c in self.children.items() if c.held)

    def hold(self, name: str, timeout_s: float = 10.0) -> None:
        """Stop ``name`` and keep it down (an operator's or a test's choice, not a crash)."""
        child = self.children[name]
        child.held = True
        child.restart_at = None
        if child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self._log(f"{name} stopped on request; held down")

    def release(self, name: str) -> None:
        """Start a held ``name`` again now."""
        child = self.children[name]
        if not child.held:
            return
        child.held = False
        child.crashes_in_a_row = 0
        child.proc = child.spawn()
        child.started_at = self._clock()
        self._log(f"{name} started on request (pid {child.proc.pid})")

    def check(self) -> bool:
        """Notice exits and restart what is due; True when any process was restarted."""
        now = self._clock()
        restarted = False
        for child in self.children.values():
            code = child.proc.poll()
            if code is None or child.held:
                continue
            if child.restart_at is None:
                up_s = now - child.started_at
                child.crashes_in_a_row = 1 if up_s >= STABLE_S else child.crashes_in_a_row + 1
                delay = backoff_s(child.crashes_in_a_row)
                child.restart_at = now + delay
                self._log(
                    f"{child.name} (pid {child.proc.pid}) exited with {code} after {up_s:.0f} s;"
                    f" restarting in {delay:.0f} s"
                )
            elif now >= child.restart_at:
                child.proc = child.spawn()
                child.started_at = now
                child.restart_at = None
                child.restarts += 1
                self._log(
                    f"{child.name} restarted (pid {child.proc.pid}, restart {child.restarts})"
                )
                if self._on_restart is not None:
                    self._on_restart(child)
                restarted = True
        return restarted

    def stop(self, order: list[str], timeout_s: float = 10.0) -> None:
        """Stop in ``order`` (the API first, local AWS last), killing what ignores SIGTERM."""
        children = [self.children[n] for n in order if n in self.children]
        for child in children:
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = self._clock() + timeout_s
        for child in children:
            try:
                child.proc.wait(max(0.1, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self.children.clear()
