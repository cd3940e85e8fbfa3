"""``multipart/form-data`` bodies (what ``client.files.create`` sends), parsed with the stdlib.

API Gateway hands the Lambda the body whole (base64 for the binary types the app declares), and
the body is bounded by the API's payload limit, so the stdlib ``email`` parser is enough; files
larger than that are uploaded to S3 directly (``POST /v1/files/uploads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP

from chalicelib.errors import BadRequestError


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    data: bytes


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The form's parts by field name; a 400 for anything that is not a multipart form."""
    if (
        not content_type.lower().startswith("multipart/form-data")
        or "boundary=" not in content_type
    ):
        raise BadRequestError(
            "Send the file as multipart/form-data with a boundary (as the OpenAI SDK does)."
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequestError("The multipart body could not be parsed.")
    parts: dict[str, Part] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        parts[name] = Part(name, filename, data)
    return parts


def field_text(parts: dict[str, Part], name: str) -> str | None:
    part = parts.get(name)
    return part.data.decode("utf-8", "replace").strip() if part is not None else None
