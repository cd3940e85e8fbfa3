"""The S3 drop folder: ``inbox/<owner>/NAME.jsonl`` → a batch; results under ``outbox/<owner>/``.

Pure functions over S3 event notifications. An event names one object version; its identity is
``bucket/key`` + the version id (versioned buckets) or else the ETag (the content), so one event
delivered twice, or the same bytes written twice, bind to one batch, and a new version starts a
new one.

The ``sequencer`` orders the events of one key: S3 gives each write of a key a larger one, and
events may arrive in any order. The newest version owns ``outbox/<owner>/NAME.*``: the batch
worker keeps, per owner and name, the largest sequencer seen (``sequence_key`` makes them
comparable as strings) and the batch it belongs to, and only that batch publishes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

INBOX = "inbox/"
OUTBOX = "outbox/"
# S3's sequencers are hex strings of varying length (about 16 digits): padded to this width they
# compare as strings in the order of their values.
SEQUENCE_WIDTH = 64
_HEX = frozenset("0123456789ABCDEF")


def sequence_key(sequencer: str) -> str:
    """``sequencer`` as a string that compares in S3's order: upper case, zero-padded to equal
    length on the left (AWS: compare sequencers as hex strings padded to equal length). "" for
    a missing or malformed one: such an event is not ordered."""
    value = sequencer.strip().upper()
    if not value or len(value) > SEQUENCE_WIDTH or not set(value) <= _HEX:
        return ""
    return value.rjust(SEQUENCE_WIDTH, "0")


@dataclass(frozen=True)
class DropObject:
    bucket: str
    key: str
    owner: str
    name: str
    version_id: str | None
    etag: str
    sequencer: str
    size: int

    @property
    def source(self) -> str:
        """The idempotency key of this object version."""
        identity = self.version_id or self.etag
        return hashlib.sha256(f"{self.bucket}/{self.key}\0{identity}".encode()).hexdigest()

    def outbox(self, suffix: str) -> str:
        return f"{OUTBOX}{self.owner}/{self.name}.{suffix}"


def drop_objects(message: dict[str, Any]) -> list[DropObject]:
    """The inbox objects an S3 notification names (``s3:TestEvent`` and others: none)."""
    found = []
    for record in message.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        # moto URL-encodes "/" in keys; AWS encodes spaces as "+": unquote_plus handles both.
        key = unquote_plus(str(obj.get("key", "")))
        parsed = parse_key(key)
        if parsed is None:
            continue
        owner, name = parsed
        found.append(
            DropObject(
                bucket=str((s3.get("bucket") or {}).get("name", "")),
                key=key,
                owner=owner,
                name=name,
                version_id=obj.get("versionId") or None,
                etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
                sequencer=str(obj.get("sequencer") or ""),
                size=int(obj.get("size") or 0),
            )
        )
    return found


def parse_key(key: str) -> tuple[str, str] | None:
    """``inbox/<owner>/NAME.jsonl`` → (owner, NAME); anything else → None."""
    if not key.startswith(INBOX) or not key.endswith(".jsonl"):
        return None
    owner, _, rest = key.removeprefix(INBOX).partition("/")
    name = rest.removesuffix(".jsonl")
    if not owner or not name or "/" in name:
        return None
    return owner, name
