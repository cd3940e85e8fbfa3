"""The page's static files, served by the API from this package (no CDN at run time).

The shell holds no data: it asks for an operator's key, keeps it in ``sessionStorage`` and reads
``/v1/dashboard/summary`` with ``Authorization: Bearer``, the only route that answers data (a
browser cannot send a bearer header on a page load). Only the names below are served.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from chalicelib.errors import NotFoundError

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
# Scripts and styles from this origin only; the page talks to this API only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> tuple[str, dict[str, str | list[str]]]:
    """The file's text and its response headers, or a 404 for any other name."""
    content_type = TYPES.get(name)
    if content_type is None:
        raise NotFoundError(f"No dashboard file named '{name}'.", code="unknown_url")
    headers: dict[str, str | list[str]] = {"Content-Type": content_type, **SECURITY_HEADERS}
    return _text(name), headers


@cache
def _text(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")
