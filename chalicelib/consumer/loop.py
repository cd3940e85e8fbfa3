"""The SQS consumer loop the poller and the batch worker share.

Receive up to the free places, hold each message by its lease (``leases``: one heartbeat keeps
every held message invisible), run ``handle`` on a thread of the pool, release the lease when it
returns. ``handle`` owns its message's fate: it deletes the message when done, or leaves it for
redelivery; an exception out of it is logged and counted (``error_kind``) and leaves the message
to reappear when its lease ends. On ``stopping`` the loop receives no more and waits for the
messages in hand; ``run_until_signalled`` sets it on SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.consumer.leases import Leases
from chalicelib.stores.queue import RequestQueue

Message = dict[str, Any]


class Stopped(Exception):
    """Raised by the signal handler to cut an idle long-poll short (``run_until_signalled``)."""


class Consumer:
    def __init__(
        self,
        queue: RequestQueue,
        handle: Callable[[Message], None],
        *,
        logger: Logger,
        counts: Counter[str],
        max_inflight: int,
        wait_time_s: int,
        lease_s: int,
        full_wait_s: float,
        error_kind: str,
        thread_name: str,
        before_receive: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        self._handle = handle
        self._log = logger
        # The owner's handled-failure counts (receive errors and ``error_kind`` land there).
        self.counts = counts
        self.max_inflight = max_inflight
        self._wait_time_s = wait_time_s
        # All places taken: how long to wait before looking again.
        self._full_wait_s = full_wait_s
        self._error_kind = error_kind
        self._before_receive = before_receive
        self.leases = Leases(queue, lease_s, logger)
        self._pool = ThreadPoolExecutor(max_inflight, thread_name)
        self._active = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        # True while in a long poll: the signal handler then cuts it short (``Stopped``).
        self.receiving = False

    @property
    def active(self) -> int:
        """Messages received and not yet handled."""
        return self._active

    def free(self) -> int:
        with self._lock:
            return max(0, self.max_inflight - self._active)

    def run(self) -> None:
        """Receive and handle until ``stopping``; then wait for the messages in hand."""
        while not self.stopping.is_set():
            free = self.free()
            if free == 0:
                time.sleep(self._full_wait_s)
                continue
            if self._before_receive is not None:
                self._before_receive()
            try:
                self.receiving = True
                messages = self.queue.receive(free, self._wait_time_s, self.leases.lease_s)
            except Stopped:
                break  # interrupted mid long-poll: nothing was received
            except Exception:  # noqa: BLE001 - AWS hiccup: log, back off, keep polling
                self.counts["receive_errors"] += 1
                self._log.exception("receive failed")
                self.stopping.wait(1.0)
                continue
            finally:
                self.receiving = False
            for message in messages:
                with self._lock:
                    self._active += 1
                self.leases.hold(message["ReceiptHandle"])
                self._pool.submit(self._guarded, message)
        self._pool.shutdown(wait=True)
        self.leases.close()

    def _guarded(self, message: Message) -> None:
        try:
            self._handle(message)
        except Exception:  # noqa: BLE001 - one bad message must not stop the consumer
            self.counts[self._error_kind] += 1
            self._log.exception(
                "message not handled; it reappears when its lease ends",
                extra={"kind": self._error_kind},
            )
        finally:
            self.leases.release(message["ReceiptHandle"])
            with self._lock:
                self._active -= 1


def run_until_signalled(consumer: Consumer, run: Callable[[], None]) -> None:
    """Run ``run`` (which runs ``consumer``) until SIGTERM or SIGINT: the messages in hand are
    finished; one not yet received simply stays for a peer."""

    def stop(signum: int, frame: FrameType | None) -> None:
        consumer.stopping.set()
        if consumer.receiving:
            # Idle in a 20 s long-poll: cut it short rather than make shutdown wait for it.
            raise Stopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run()
