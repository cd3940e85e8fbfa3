"""The HTTP edge of the gateway: errors → responses in the route's dialect (OpenAI's shape, or
Anthropic's on ``/v1/messages*``), one access log line each."""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from aws_lambda_powertools import Logger
from chalice.app import Chalice, Request, Response

from chalicelib import metrics
from chalicelib.errors import BadRequestError, EdgeError, FirstError, PayloadTooLargeError
from chalicelib.protocol.messages import speaks_anthropic

JSON = {"Content-Type": "application/json"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body, separators=(",", ":")),
        status_code=status,
        headers={**JSON, **(headers or {})},
    )


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """The body of an error raised at the edge, outside the routes (routing, framing)."""
    return EdgeError(status, message, code=code).to_body()


def error_response(exc: FirstError, anthropic: bool = False) -> Response:
    headers = dict(exc.headers)
    if exc.request_id:
        headers["x-request-id"] = exc.request_id
        if anthropic:
            headers["request-id"] = exc.request_id  # the header Anthropic's clients read
    if anthropic:
        return json_response(exc.to_anthropic_body(), exc.anthropic_status, headers)
    return json_response(exc.to_body(), exc.STATUS_CODE, headers)


def check_size(request: Request, limit: int) -> bytes:
    # Chalice declares ``str | bytes``; it encodes a text body, but narrow rather than trust it.
    body = request.raw_body or b""
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > limit:
        raise PayloadTooLargeError(
            f"The request body is {len(raw)} bytes; the limit is {limit} bytes."
        )
    return raw


_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+(?:\.\d+)?)")


def preferred_wait_s(headers: Any) -> float | None:
    """``Prefer: wait=N`` (RFC 7240): answer within N seconds; on expiry a 504 carries the id."""
    value = next((v for k, v in dict(headers).items() if k.lower() == "prefer"), None)
    match = _PREFER_WAIT.search(value or "")
    return float(match.group(1)) if match else None


def openai_route(
    logger: Logger,
    get_request: Callable[[], Request],
    recorder: metrics.MetricsRecorder | None = None,
    known_models: Callable[[], Collection[str]] | None = None,
) -> Callable[..., Any]:
    """Wrap a view: every error becomes an OpenAI error; one structured log line per call, and
    with ``recorder`` its metrics (``ApiRequests``, ``ApiLatency``, ``ApiErrors``), flushed at
    once: a Lambda may be frozen as soon as it has answered.

    A view may set ``log`` keys (user, model, request_id, tokens) in the dict it is passed.
    """

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            start = time.perf_counter()
            log: dict[str, Any] = {}
            try:
                response = view(log, *args, **kwargs)
            except FirstError as exc:
                log.setdefault("request_id", exc.request_id)
                log["error_code"] = exc.code
                if exc.param == "model":
                    # A name no deployment knows is the caller's text, and text may carry a
                    # prompt pasted in the wrong field: the client sees it echoed, logs do not.
                    log.pop("model", None)
                response = error_response(exc, speaks_anthropic(get_request().path))
            except Exception:
                logger.exception("unhandled error")
                response = error_response(
                    FirstError("The server had an error processing your request."),
                    speaks_anthropic(get_request().path),
                )
            request = get_request()
            latency_ms = round((time.perf_counter() - start) * 1000, 2)
            logger.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.context.get("resourcePath"),
                    "status": response.status_code,
                    "latency_ms": latency_ms,
                    **{k: v for k, v in log.items() if v is not None},
                },
            )
            if recorder is not None:
                path = str(request.context.get("resourcePath") or view.__name__)
                _record(recorder, known_models, logger, path, response.status_code, latency_ms, log)
            return response

        return wrapper

    return decorate


def _record(
    recorder: metrics.MetricsRecorder,
    known_models: Callable[[], Collection[str]] | None,
    logger: Logger,
    route: str,
    status: int,
    latency_ms: float,
    log: dict[str, Any],
) -> None:
    try:
        # A dimension only for a model the registry names: anything else is the caller's text
        # (and a new CloudWatch metric per name).
        model = log.get("model")
        if model is not None and (known_models is None or model not in known_models()):
            model = None
        metrics.api_request(
            recorder,
            route=route,
            status=status,
            latency_ms=latency_ms,
            model=model,
            code=log.get("error_code"),
        )
        recorder.flush()
    except Exception:  # noqa: BLE001 - the response is made; metrics never fail it
        logger.exception("api metrics failed")


# What Chalice answers itself, before any view runs, in its own shape ({"Code", "Message"}): a
# method the route lacks (405), a Content-Type it does not accept (415), an error outside our
# views (500). It does so in Lambda as well as locally, so the rewrite is a middleware.
_CHALICE_CODES = {405: "method_not_allowed", 415: "unsupported_media_type"}


def openai_errors(request: Request | None, get_response: Callable[..., Response]) -> Response:
    """Chalice middleware: Chalice's own error responses, rewritten as OpenAI errors."""
    response: Response = get_response(request)
    body = response.body
    if not (isinstance(body, dict) and set(body) == {"Code", "Message"}):
        return response
    status = response.status_code
    method = request.method if request is not None else ""
    path = request.path if request is not None else ""
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    if status == 405:
        allowed = headers.get("Allow", "")
        message = f"Method {method} is not allowed on {path} (allowed: {allowed})."
    elif status == 415:
        content_type = request.headers.get("content-type", "") if request is not None else ""
        message = f"Unsupported Content-Type '{content_type}'; send application/json."
    elif status >= 500:
        message = "The server had an error processing your request."
    else:
        message = str(body["Message"])
    if speaks_anthropic(path):
        exc = BadRequestError(message) if status < 500 else FirstError(message)
        return Response(
            body=json.dumps(exc.to_anthropic_body()),
            status_code=status,
            headers={**headers, **JSON},
        )
    error = error_body(status, message, _CHALICE_CODES.get(status))
    return Response(body=json.dumps(error), status_code=status, headers={**headers, **JSON})


class ThreadSafeChalice(Chalice):
    """``Chalice`` with per-thread ``current_request`` / ``lambda_context``.

    A Lambda container serves one request at a time, so Chalice keeps the current request on
    the app object; the local API server runs requests on threads, which would see each other's
    request. Thread-local storage gives each its own; in Lambda it behaves exactly as before.
    """

    _local = threading.local()

    @property
    def current_request(self) -> Request | None:
        return getattr(self._local, "request", None)

    @current_request.setter
    def current_request(self, value: Request | None) -> None:
        self._local.request = value

    @property
    def lambda_context(self) -> Any:
        return getattr(self._local, "context", None)

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        self._local.context = value
