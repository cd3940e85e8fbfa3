"""Images in requests (issue 23): each reference checked, bounded and made a data URL.

A reference is what OpenAI's ``image_url`` content part carries in ``url`` (Responses'
``input_image`` and Anthropic's ``image`` block carry the same things under other names):

- ``data:image/<format>;base64,<data>``: inline. Over the REST route it is bounded by the body
  (6 MB); a WebSocket message is at most 128 KB (API Gateway's frame limit), so a larger image
  goes there as a file id;
- ``file-<id>`` (or ``image_url.file_id``), or ``s3://<bucket>/files/<file-id>`` in the gateway's
  bucket: a file the caller uploaded with ``POST /v1/files`` and purpose ``vision``. Another
  user's file is not found, exactly like one that never existed;
- ``https://...``: only under a prefix of ``Settings.image_url_allow`` (empty: none). The API
  fetches it, not the HPC node: compute nodes often have no route to the internet, the allow-list
  is then enforced in one place (no redirects followed), and a bad image is a 400 before the
  request is queued rather than a failure on a GPU node.

Every image is checked with Pillow here, reading only its header (``Image.open`` is lazy): a
format in ``image_formats``, at most ``image_max_bytes`` and ``image_max_pixels``; PNG's chunks
are verified too (a truncated PNG is refused here). What only a full decode finds (a truncated
JPEG) is refused by the engine on the node, which decodes under the same pixel bound, also as a
400 naming the part. The engine then receives every image as a data URL, OpenAI's standard form
(vLLM takes it as is): nothing of the gateway's S3 reaches the node. Large images still never
ride the queue: a payload over ``inline_limit_bytes`` is written to S3, and one over
``compute_offload_over_bytes`` reaches the node by presigned URL (``hpc_functions.offload``).

The one function other dialects call: :meth:`ImageResolver.data_url` (one reference → a checked
data URL, or a ``BadRequestError`` naming ``param``); :func:`parse_image_ref` is its pure half.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chalicelib.errors import BadRequestError

if TYPE_CHECKING:
    from chalicelib.auth import Principal
    from chalicelib.settings import Settings
    from chalicelib.stores.files import FileStore
    from chalicelib.stores.objects import ObjectStore

VISION_PURPOSE = "vision"
# Pillow's format names, and the MIME types a data URL names them by.
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^;,]*)*),", re.ASCII)
_FILE_ID = re.compile(r"file-[A-Za-z0-9_-]{1,128}")
FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImageBounds:
    max_per_request: int
    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]
    # https URL prefixes the API may fetch (scheme, host, port and path prefix must all match).
    url_allow: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: Settings) -> ImageBounds:
        return cls(
            max_per_request=s.image_max_per_request,
            max_bytes=s.image_max_bytes,
            max_pixels=s.image_max_pixels,
            formats=tuple(f.upper() for f in s.image_formats),
            url_allow=tuple(s.image_url_allow),
        )


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: ``kind`` is "data" (``data`` holds the bytes), "file" (``file_id``)
    or "https" (``url``)."""

    kind: str
    data: bytes = b""
    file_id: str = ""
    url: str = ""


def check_image_bytes(data: bytes, bounds: ImageBounds, param: str) -> ImageInfo:
    """``data`` is an image the engines may take: a 400 naming ``param`` otherwise. Reads the
    header only (and PNG's chunk checksums), never the pixels: bounded memory for any input."""
    if len(data) > bounds.max_bytes:
        raise _bad(param, f"is {len(data)} bytes; at most {bounds.max_bytes} are allowed")
    if not data:
        raise _bad(param, "is empty")
    from PIL import Image

    try:
        # ``formats`` limits the decoders tried to those allowed: any other type is refused.
        with Image.open(io.BytesIO(data), formats=list(bounds.formats)) as image:
            fmt, (width, height) = str(image.format), image.size
            if width * height > bounds.max_pixels:
                raise _bad(
                    param,
                    f"is {width}x{height} pixels; at most {bounds.max_pixels} pixels are allowed",
                )
            if fmt == "PNG":
                image.verify()  # chunk CRCs to the end, without decompressing
    except BadRequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Over Pillow's own bound (twice its MAX_IMAGE_PIXELS, or once where warnings raise).
        raise _bad(param, f"has too many pixels ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure on client bytes is their 400
        # UnidentifiedImageError, DecompressionBombError, SyntaxError, OSError, EOFError...
        raise _bad(
            param,
            f"is not a readable image in an allowed format ({', '.join(bounds.formats)}):"
            f" {type(exc).__name__}: {str(exc)[:200]}",
            code="invalid_image",
        ) from exc
    return ImageInfo(fmt, width, height, len(data))


def data_url_of(data: bytes, info: ImageInfo) -> str:
    return f"data:{MIME_TYPES.get(info.format, 'application/octet-stream')};base64," + (
        base64.b64encode(data).decode()
    )


def parse_image_ref(url: Any, bounds: ImageBounds, param: str, *, bucket: str = "") -> ImageRef:
    """What a reference names, with no I/O: a data URL's bytes decoded (size bounded first),
    a file id (from ``file-…`` or ``s3://<bucket>/files/file-…``), or an allowed https URL."""
    if not isinstance(url, str) or not url:
        raise BadRequestError(f"{param}: the image URL must be a non-empty string.", param=param)
    if url.startswith("data:"):
        return ImageRef("data", data=_data_url_bytes(url, bounds, param))
    if _FILE_ID.fullmatch(url):
        return ImageRef("file", file_id=url)
    if url.startswith("s3://"):
        parts = urlsplit(url)
        file_id = parts.path.removeprefix("/files/")
        if not bucket or parts.netloc != bucket or not _FILE_ID.fullmatch(file_id):
            raise BadRequestError(
                f"{param}: an s3:// image must be a file of yours in the gateway's bucket"
                " (s3://<bucket>/files/<file id>); upload it with POST /v1/files, purpose"
                " 'vision'.",
                param=param,
                code="invalid_image_url",
            )
        return ImageRef("file", file_id=file_id)
    if url.startswith("https://") and url_allowed(url, bounds.url_allow):
        return ImageRef("https", url=url)
    raise BadRequestError(
        f"{param}: images are accepted as data URLs, file ids (POST /v1/files, purpose"
        " 'vision') or https URLs under an allowed prefix; this URL is none of them.",
        param=param,
        code="invalid_image_url",
    )


def url_allowed(url: str, allow: tuple[str, ...]) -> bool:
    """Whether ``url`` is under one of ``allow``: same scheme (https), host and port, and the
    path starts at a segment boundary of the prefix's (``https://a.org/img`` does not allow
    ``https://a.org/imgs`` nor ``https://a.org.evil.com/img``). No user info, no fragments."""
    try:
        got = urlsplit(url)
        port = got.port
    except ValueError:
        return False
    if got.scheme != "https" or got.username or got.password or got.fragment or not got.hostname:
        return False
    for prefix in allow:
        want = urlsplit(prefix)
        if want.scheme != "https" or want.hostname != got.hostname or want.port != port:
            continue
        base = want.path.rstrip("/") + "/"
        if (got.path or "/").startswith(base) or got.path == want.path.rstrip("/"):
            return True
    return False


def _data_url_bytes(url: str, bounds: ImageBounds, param: str) -> bytes:
    head = _DATA_URL.match(url)
    if head is None or ";base64" not in head["params"]:
        raise BadRequestError(
            f"{param}: a data URL must be data:image/<format>;base64,<data>.",
            param=param,
            code="invalid_image_url",
        )
    mime = (head["mime"] or "").lower()
    if mime not in MIME_TYPES.values():
        raise BadRequestError(
            f"{param}: {mime or 'no'} type; images must be one of "
            f"{', '.join(MIME_TYPES[f] for f in bounds.formats if f in MIME_TYPES)}.",
            param=param,
            code="invalid_image",
        )
    text = url[head.end() :]
    # Bounded before decoding: four base64 characters carry three bytes.
    if len(text) // 4 * 3 > bounds.max_bytes + 3:
        raise _bad(param, f"is over {bounds.max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(param, f"is not valid base64: {exc}", code="invalid_image") from exc


def _bad(param: str, what: str, code: str = "image_too_large") -> BadRequestError:
    return BadRequestError(f"{param}: the image {what}.", param=param, code=code)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then an HTTPError


def fetch_https(url: str, max_bytes: int, *, context: ssl.SSLContext | None = None) -> bytes:
    """GET ``url`` (no redirects: one could leave the allow-list), reading at most one byte
    more than ``max_bytes`` (the check then refuses it). ``context``: the TLS trust (default:
    the system's)."""
    opener = urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT_S) as resp:
            data: bytes = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open otherwise
        raise
    return data


class ImageResolver:
    """The I/O half: file ids looked up as the caller's, https URLs fetched."""

    def __init__(
        self,
        bounds: ImageBounds,
        files: FileStore,
        objects: ObjectStore,
        *,
        fetch: Callable[[str, int], bytes] = fetch_https,
    ) -> None:
        self.bounds = bounds
        self._files = files
        self._objects = objects
        self._fetch = fetch

    def data_url(self, principal: Principal, reference: Any, param: str) -> str:
        """One image reference (see the module doc) as a checked data URL, or a 400 naming
        ``param``. Another user's file is answered exactly like a missing one."""
        ref = parse_image_ref(reference, self.bounds, param, bucket=self._objects.bucket)
        if ref.kind == "data":
            data = ref.data
        elif ref.kind == "file":
            data = self._file_bytes(principal, ref.file_id, param)
        else:
            data = self._https_bytes(ref.url, param)
        return data_url_of(data, check_image_bytes(data, self.bounds, param))

    def resolve_parts(self, principal: Principal, parts: list[tuple[str, dict[str, Any]]]) -> None:
        """Every ``image_url`` part of a request made a checked data URL, in place (``detail``
        kept), with the per-request count bounded."""
        if len(parts) > self.bounds.max_per_request:
            raise BadRequestError(
                f"The request has {len(parts)} images; at most {self.bounds.max_per_request}"
                " are allowed.",
                param=parts[self.bounds.max_per_request][0],
                code="too_many_images",
            )
        for param, part in parts:
            image = part.get("image_url")
            if not isinstance(image, dict):
                raise BadRequestError(
                    f"{param}: image_url must be an object with a url.", param=param
                )
            reference = image.get("url") or image.get("file_id")
            url = self.data_url(principal, reference, f"{param}.image_url")
            part["image_url"] = {
                "url": url,
                **({"detail": image["detail"]} if image.get("detail") else {}),
            }

    def _file_bytes(self, principal: Principal, file_id: str, param: str) -> bytes:
        record = self._files.get(principal.id, file_id)
        if record is None or record.get("purpose") != VISION_PURPOSE:
            raise BadRequestError(
                f"{param}: no file '{file_id}' of yours uploaded with purpose 'vision'.",
                param=param,
                code="invalid_image_url",
            )
        size = int(record.get("bytes") or 0)
        if record.get("status") == "uploaded":
            # A presigned upload: its record learns the size when it is first read.
            size = self._objects.size(record["key"]) or 0
        if size > self.bounds.max_bytes:
            raise _bad(param, f"is {size} bytes; at most {self.bounds.max_bytes} are allowed")
        return self._objects.get_bytes(record["key"])

    def _https_bytes(self, url: str, param: str) -> bytes:
        try:
            data = self._fetch(url, self.bounds.max_bytes)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BadRequestError(
                f"{param}: the image could not be fetched: {str(exc)[:200]}",
                param=param,
                code="image_fetch_failed",
            ) from exc
        return data
