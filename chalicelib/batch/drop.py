"""The S3 drop folder: ``inbox/<owner>/NAME.jsonl`` → a batch; results under ``outbox/<owner>/``.

Pure functions over S3 event notifications. An event names one object version; its identity is
``bucket/key`` + the version id (versioned buckets) or else the ETag (the content), so one event
delivered twice, or the same bytes written twice, bind to one batch, and a new version starts a
new one. The ``sequencer`` orders events of one key; it is kept on the batch for tracing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

INBOX = "inbox/"
OUTBOX = "outbox/"


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
