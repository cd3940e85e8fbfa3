"""The offline stack's supervisor restarts what dies, with backoff, and leaves the rest alone."""

from __future__ import annotations

import signal
import subprocess

from offline.supervisor import STABLE_S, Supervisor, backoff_s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def test_backoff_doubles_to_a_ceiling() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_killed_child_is_restarted_after_its_backoff_and_the_others_keep_running() -> None:
    clock = Clock()
    lines: list[str] = []
    restarted: list[str] = []
    sup = Supervisor(lines.append, on_restart=lambda c: restarted.append(c.name), clock=clock)
    try:
        poller = sup.add("poller-0", sleeper)
        api = sup.add("api", sleeper)
        api_pid = api.proc.pid
        first_pid = poller.proc.pid
        poller.proc.send_signal(signal.SIGKILL)
        poller.proc.wait()

        assert sup.check() is False  # noticed: the restart is scheduled, not yet due
        assert "poller-0" in lines[-1] and "exited with -9" in lines[-1]
        clock.now += 0.5
        assert sup.check() is False
        clock.now += 0.6
        assert sup.check() is True
        assert poller.proc.pid != first_pid and poller.proc.poll() is None
        assert restarted == ["poller-0"] and poller.restarts == 1
        assert api.proc.pid == api_pid and api.proc.poll() is None

        # Dying again at once waits longer; after a stable minute it is quick again.
        poller.proc.kill()
        poller.proc.wait()
        sup.check()
        clock.now += 1.5
        assert sup.check() is False
        clock.now += 1.0
        assert sup.check() is True
        clock.now += STABLE_S + 1
        poller.proc.kill()
        poller.proc.wait()
        sup.check()
        clock.now += 1.1
        assert sup.check() is True
    finally:
        sup.stop(["api", "poller-0"], timeout_s=5)
    assert sup.children == {}
