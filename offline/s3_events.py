"""S3 event notifications as S3 writes them: with ``sequencer`` (and ``versionId``), which moto
leaves out of the events it sends to queues.

The drop folder orders the versions of one key by the event's ``sequencer`` (chalicelib/batch/
drop.py): S3 gives every write of a key a larger one than the write before. moto's queue events
carry neither it nor the version id, so locally every event would look unordered. This stamps
each stored object once with a sequencer from one counter, inside a lock around moto's
``put_object`` (which stores the key and sends its events on the same thread), so the sequencers
of one key grow in the order its writes were stored, as on S3. The figures are 16 upper-case hex
digits, like S3's; only their order means anything.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import moto.s3.notifications as notifications
from moto.s3.models import S3Backend

_lock = threading.RLock()
_last = 0


def _next_sequencer() -> str:
    global _last
    _last = max(_last + 1, time.time_ns())
    return f"{_last:016X}"


def _stamp(key: Any) -> str:
    """The key's sequencer, given on its first event (one put may match several notifications)."""
    stamped = getattr(key, "first_sequencer", None)
    if stamped is None:
        with _lock:
            stamped = _next_sequencer()
        key.first_sequencer = stamped
    return str(stamped)


def add_sequencers() -> None:
    """Make moto's S3 events carry ``sequencer`` and, in a versioned bucket, ``versionId``."""
    original_event: Callable[..., dict[str, Any]] = getattr(
        notifications._get_s3_event, "__wrapped__", notifications._get_s3_event
    )
    if "sequencer" in inspect.getsource(original_event):
        return  # moto writes them itself now: nothing to add

    @functools.wraps(original_event)
    def get_s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> Any:
        event = original_event(event_name, bucket, key, notification_id)
        for record in event["Records"]:
            obj = record["s3"]["object"]
            obj["sequencer"] = _stamp(key)
            if bucket.is_versioned and key.version_id not in (None, "null"):
                obj["versionId"] = key.version_id
        return event

    notifications._get_s3_event = get_s3_event

    original_put: Callable[..., Any] = getattr(
        S3Backend.put_object, "__wrapped__", S3Backend.put_object
    )

    @functools.wraps(original_put)
    def put_object(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        # Storing the key and sending its events in one critical section: two writes of one key
        # get sequencers in the order they were stored.
        with _lock:
            return original_put(self, *args, **kwargs)

    S3Backend.put_object = put_object  # type: ignore[method-assign]
