"""The API's fetch of an allow-listed https image, against a real TLS server of the test's own:
the bytes arrive; a redirect (even to an allowed URL), an error status and an oversized body are
400s naming the part."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError
from chalicelib.images import ImageBounds, ImageResolver, fetch_https
from chalicelib.services import Services
from chalicelib.settings import REPO_ROOT
from tests.integration.pollers import poller_services
from tests.servers import serving

ALICE = Principal(id="alice", username="alice", kind="user")
MAX_BYTES = 4096


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(out, format="PNG")
    return out.getvalue()


class Images(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/img/ok.png":
            self._send(200, png())
        elif self.path == "/img/big.png":
            self._send(200, b"\x89PNG" + b"\0" * (MAX_BYTES * 64))
        elif self.path == "/img/moved.png":
            self.send_response(302)
            self.send_header("Location", "/img/ok.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The client reads one byte past its bound, then hangs up.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def resolver(own_stage: str, tmp_path: Path) -> Iterator[tuple[ImageResolver, str]]:
    cert, key = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"https://localhost:{server.server_address[1]}"
    services: Services = poller_services(own_stage, REPO_ROOT / "infra/deployments/local.json")
    bounds = ImageBounds(2, MAX_BYTES, 1 << 20, ("PNG",), (f"{base}/img/",))
    with serving(server):
        yield (
            ImageResolver(
                bounds,
                services.file_store,
                services.objects,
                fetch=lambda url, n: fetch_https(url, n, context=trust),
            ),
            base,
        )


def test_an_allowed_https_image_is_fetched(resolver: tuple[ImageResolver, str]) -> None:
    images, base = resolver
    url = images.data_url(ALICE, f"{base}/img/ok.png", "p")
    assert url.startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("moved.png", "image_fetch_failed"),
        ("missing.png", "image_fetch_failed"),
        ("big.png", "image_too_large"),
    ],
)
def test_a_redirect_an_error_and_an_oversized_image_are_400s(
    resolver: tuple[ImageResolver, str], path: str, code: str
) -> None:
    images, base = resolver
    with pytest.raises(BadRequestError) as refused:
        images.data_url(ALICE, f"{base}/img/{path}", "p")
    assert (refused.value.param, refused.value.code) == ("p", code)
