"""A task measured as the Globus Compute service receives it, and refused over its limit.

Both executors refuse a task over the service's submission limit before sending it
(``TaskTooLargeError``): the SDK's own packing of the arguments (``pack_task``), JSON-encoded
in the submission's body.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from chalicelib.compute.errors import TaskTooLargeError

# A submission's body beside its tasks: JSON keys and the SDK's user_runtime (918 bytes for one
# task with SDK 4.19.0, measured), with room to spare.
SUBMIT_ENVELOPE_BYTES = 4096


@cache
def _serializer() -> Any:
    # Imported on first use: the Lambda package never imports the SDK (only the poller does).
    from globus_compute_sdk.serialize import ComputeSerializer

    return ComputeSerializer()


def pack_task(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> str:
    """A task's arguments as the SDK's ``Batch.add`` packs them (its default serializer)."""
    serde = _serializer()
    return str(serde.pack_buffers([serde.serialize(args), serde.serialize(kwargs)]))


def submitted_bytes(payload: str) -> int:
    """What a packed task adds to a submission's body: its JSON string (the base64 lines'
    newlines are escaped there) and a separator."""
    return len(json.dumps(payload)) + 2


def check_submission(size_bytes: int, limit_bytes: int | None) -> None:
    """Refuse a task of ``size_bytes`` (``submitted_bytes``) that would take its submission
    over ``limit_bytes`` (None: unchecked)."""
    if limit_bytes is not None and size_bytes + SUBMIT_ENVELOPE_BYTES > limit_bytes:
        raise TaskTooLargeError(size_bytes + SUBMIT_ENVELOPE_BYTES, limit_bytes)
