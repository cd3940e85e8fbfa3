"""S3's ``content-length-range`` for browser-style form uploads (presigned POST), which moto skips.

A presigned POST carries a base64 policy; S3 refuses a file outside its ``content-length-range``
with ``EntityTooLarge`` / ``EntityTooSmall`` (400) and stores nothing. moto stores whatever
arrives, so locally an oversized upload would be accepted and only the gateway's own settle
step would refuse it. This WSGI layer checks the range in front of moto, as S3 does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from xml.sax.saxutils import escape

from werkzeug.formparser import parse_form_data

Limits = tuple[int, int]


def length_range(policy_b64: str) -> Limits | None:
    """The policy's ``content-length-range`` (min, max), or None when it has none or is unreadable
    (moto answers an unreadable policy itself)."""
    try:
        policy = json.loads(base64.b64decode(policy_b64, validate=True))
        conditions = policy.get("conditions") or []
    except (binascii.Error, ValueError, AttributeError):
        return None
    for condition in conditions:
        if (
            isinstance(condition, list)
            and len(condition) == 3
            and condition[0] == "content-length-range"
        ):
            try:
                return int(condition[1]), int(condition[2])
            except (TypeError, ValueError):
                return None
    return None


def _error(code: str, message: str, size: int, limit_name: str, limit: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<ProposedSize>{size}</ProposedSize><{limit_name}>{limit}</{limit_name}>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class PostPolicyLimits:
    """Refuses a form upload whose file is outside its policy's ``content-length-range``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        content_type = str(environ.get("CONTENT_TYPE", ""))
        if environ.get("REQUEST_METHOD") != "POST" or not content_type.startswith(
            "multipart/form-data"
        ):
            return self._app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        refused = self._refusal(environ, body)
        if refused is not None:
            start_response("400 Bad Request", [("Content-Type", "application/xml")])
            return [refused]
        # moto reads the body again from the start.
        environ["wsgi.input"] = io.BytesIO(body)
        return self._app(environ, start_response)

    def _refusal(self, environ: dict[str, Any], body: bytes) -> bytes | None:
        probe = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        _, form, files = parse_form_data(probe)
        try:
            limits = length_range(form.get("policy") or form.get("Policy") or "")
            upload = files.get("file")
            if limits is None or upload is None:
                return None
            upload.stream.seek(0, io.SEEK_END)
            size = upload.stream.tell()
        finally:
            for part in files.values():
                part.close()
        low, high = limits
        if size > high:
            return _error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                size,
                "MaxSizeAllowed",
                high,
            )
        if size < low:
            return _error(
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size",
                size,
                "MinSizeAllowed",
                low,
            )
        return None
