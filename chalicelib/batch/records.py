"""What the batch routes and the batch worker share: one JSONL line as written to a shard or an
output file (a batch's caller is stored with ``Principal.to_item``)."""

from __future__ import annotations

import json
from typing import Any


def dumps_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
