"""S3's checks of a browser-style form upload (presigned POST), which moto skips.

S3 refuses a form POST that is not a well-formed multipart form with a ``key`` and one ``file``
(``MalformedPOSTRequest`` / ``InvalidArgument``), an unreadable policy
(``InvalidPolicyDocument``), and a file outside the policy's ``content-length-range``
(``EntityTooLarge`` / ``EntityTooSmall``), all 400 with nothing stored. moto stores whatever
arrives in range or not, and answers a malformed form with a 500. This WSGI layer answers in
front of moto as S3 does. (It does not check the policy's signature or its other conditions.)
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


class Refusal(Exception):
    """S3's 400 for this form: its error code, message and extra XML fields."""

    def __init__(self, code: str, message: str, **fields: int) -> None:
        super().__init__(message)
        self.code = code
        self.fields = fields

    def xml(self) -> bytes:
        extra = "".join(f"<{k}>{v}</{k}>" for k, v in self.fields.items())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{self.code}</Code><Message>{escape(str(self))}</Message>{extra}"
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
        ).encode()


def length_range(policy_b64: str) -> tuple[int, int] | None:
    """The policy's ``content-length-range`` (min, max), None when it sets none; a policy that
    is not base64 JSON with a list of conditions, or a range that is not two integers, is
    refused."""
    try:
        policy = json.loads(base64.b64decode(policy_b64, validate=True))
        conditions = policy["conditions"]
        if not isinstance(conditions, list):
            raise TypeError
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Refusal("InvalidPolicyDocument", "Invalid Policy: Invalid JSON.") from exc
    for condition in conditions:
        if isinstance(condition, list) and condition[:1] == ["content-length-range"]:
            try:
                _, low, high = condition
                return int(low), int(high)
            except (TypeError, ValueError) as exc:
                raise Refusal(
                    "InvalidPolicyDocument",
                    "Invalid Policy: Invalid content-length-range condition.",
                ) from exc
    return None


def check_form(environ: dict[str, Any], body: bytes) -> None:
    """Raises the ``Refusal`` S3 would answer this form POST with."""
    probe = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    _, form, files = parse_form_data(probe)
    try:
        if not form and not files:
            raise Refusal(
                "MalformedPOSTRequest",
                "The body of your POST request is not well-formed multipart/form-data.",
            )
        if not form.get("key"):
            raise Refusal("InvalidArgument", "Bucket POST must contain a field named 'key'.")
        upload = files.get("file")
        if upload is None or len(files) != 1:
            raise Refusal("InvalidArgument", "POST requires exactly one file upload per request.")
        policy = form.get("policy") or form.get("Policy")
        limits = None if policy is None else length_range(policy)
        upload.stream.seek(0, io.SEEK_END)
        size = upload.stream.tell()
    finally:
        for part in files.values():
            part.close()
    if limits is None:
        return
    low, high = limits
    if size > high:
        raise Refusal(
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
            ProposedSize=size,
            MaxSizeAllowed=high,
        )
    if size < low:
        raise Refusal(
            "EntityTooSmall",
            "Your proposed upload is smaller than the minimum allowed size",
            ProposedSize=size,
            MinSizeAllowed=low,
        )


class PostPolicyLimits:
    """Answers a form upload S3 would refuse with S3's 400; passes the rest to moto."""

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
        try:
            check_form(environ, body)
        except Refusal as refusal:
            start_response("400 Bad Request", [("Content-Type", "application/xml")])
            return [refusal.xml()]
        # moto reads the body again from the start.
        environ["wsgi.input"] = io.BytesIO(body)
        return self._app(environ, start_response)
