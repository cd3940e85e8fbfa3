"""The one exception tree. Every error that reaches a client is rendered here, OpenAI-shaped.

::

    FirstError                      500 server_error
    ├── BadRequestError             400 invalid_request_error (param names the field)
    │   ├── PayloadTooLargeError    413 invalid_request_error
    │   └── LengthRequiredError     411 invalid_request_error (a body without a Content-Length)
    ├── AuthenticationError         401 invalid_request_error, code invalid_api_key
    ├── PermissionDeniedError       403 invalid_request_error
    ├── NotFoundError               404 invalid_request_error
    │   └── ModelNotFoundError      404 invalid_request_error, code model_not_found
    ├── StreamGoneError             410 invalid_request_error, code connection_gone
    ├── RateLimitError              429 requests, Retry-After
    ├── EngineFailedError           500 server_error (carries the request id)
    ├── BadGatewayError             502 server_error (``first proxy``: the gateway unreachable)
    ├── UpstreamUnavailableError    503 server_error
    ├── WaitTimeoutError            504 timeout (carries the request id)
    └── EdgeError                   its own status: the HTTP edge's errors outside the routes
                                    (Chalice's 405/415, the local server's framing: 414, 431, …)

The body is ``{"error": {"message", "type", "param", "code"}}`` with ``code`` a string or null,
as openai-python expects (``to_body``). A request that failed keeps its error on its record as
``{"error", "status_code"}`` (``to_record``), which ``error_from_result`` turns back into the
error. Every error body, whoever answers it (the routes, the WebSocket frames, the poller's
failed records, ``first proxy``), is one of these: no body is written by hand.

Layers below the HTTP edge raise their own errors and are translated where they meet it: the
stores' ``StoreError`` family, the compute adapter's ``ComputeError`` family
(``chalicelib.compute.errors``, translated by the poller: ``chalicelib.poller.planning``), the
router's ``NoDeploymentError``.

On the Anthropic routes (``/v1/messages*``) the same error renders in
Anthropic's shape instead (``to_anthropic_body``): ``{"type": "error", "error": {"type",
"message"}}`` with Anthropic's type names, and its status (``ANTHROPIC_STATUS``: 529
``overloaded_error`` where OpenAI's routes answer 503), so the anthropic SDK raises its own classes.
"""

from __future__ import annotations

from typing import Any


class FirstError(Exception):
    STATUS_CODE = 500
    ERROR_TYPE = "server_error"
    CODE: str | None = None
    # Anthropic's name for this error, and its status where it differs from STATUS_CODE.
    ANTHROPIC_TYPE = "api_error"
    ANTHROPIC_STATUS: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.CODE
        self.request_id = request_id
        self.headers = dict(headers or {})

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.ERROR_TYPE,
            "param": self.param,
            "code": self.code,
        }
        if self.request_id is not None:
            error["request_id"] = self.request_id
        return {"error": error}

    def to_record(self) -> dict[str, Any]:
        """The error as a failed request's record keeps it: ``{"error", "status_code"}``."""
        return {**self.to_body(), "status_code": self.STATUS_CODE}

    @property
    def anthropic_status(self) -> int:
        return self.ANTHROPIC_STATUS or self.STATUS_CODE

    def to_anthropic_body(self) -> dict[str, Any]:
        """The Messages API's error body (the request id goes in ``request_id`` beside it)."""
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": self.ANTHROPIC_TYPE, "message": self.message},
        }
        if self.request_id is not None:
            body["request_id"] = self.request_id
        return body


class BadRequestError(FirstError):
    STATUS_CODE = 400
    ERROR_TYPE = "invalid_request_error"
    ANTHROPIC_TYPE = "invalid_request_error"


class PayloadTooLargeError(BadRequestError):
    STATUS_CODE = 413
    CODE = "request_too_large"
    ANTHROPIC_TYPE = "request_too_large"


class LengthRequiredError(BadRequestError):
    STATUS_CODE = 411
    CODE = "length_required"


class AuthenticationError(FirstError):
    STATUS_CODE = 401
    ERROR_TYPE = "invalid_request_error"
    CODE = "invalid_api_key"
    ANTHROPIC_TYPE = "authentication_error"


class PermissionDeniedError(FirstError):
    STATUS_CODE = 403
    ERROR_TYPE = "invalid_request_error"
    ANTHROPIC_TYPE = "permission_error"


class NotFoundError(FirstError):
    STATUS_CODE = 404
    ERROR_TYPE = "invalid_request_error"
    ANTHROPIC_TYPE = "not_found_error"


class ModelNotFoundError(NotFoundError):
    CODE = "model_not_found"


class StreamGoneError(FirstError):
    """The stream relay's answer when the client's WebSocket connection is closed: the HPC
    function stops generating."""

    STATUS_CODE = 410
    ERROR_TYPE = "invalid_request_error"
    CODE = "connection_gone"
    ANTHROPIC_TYPE = "invalid_request_error"


class RateLimitError(FirstError):
    STATUS_CODE = 429
    ERROR_TYPE = "requests"
    CODE = "rate_limit_exceeded"
    ANTHROPIC_TYPE = "rate_limit_error"


class EngineFailedError(FirstError):
    STATUS_CODE = 500
    ERROR_TYPE = "server_error"
    CODE = "engine_error"


class BadGatewayError(FirstError):
    STATUS_CODE = 502
    ERROR_TYPE = "server_error"
    CODE = "bad_gateway"


class UpstreamUnavailableError(FirstError):
    STATUS_CODE = 503
    ERROR_TYPE = "server_error"
    CODE = "unavailable"
    # Anthropic clients know load shedding as 529 overloaded_error (and retry it).
    ANTHROPIC_TYPE = "overloaded_error"
    ANTHROPIC_STATUS = 529


class WaitTimeoutError(FirstError):
    STATUS_CODE = 504
    ERROR_TYPE = "timeout"
    CODE = "timeout"
    ANTHROPIC_TYPE = "timeout_error"


class EdgeError(FirstError):
    """An error the HTTP edge answers outside the routes, with the status it was raised with:
    ``invalid_request_error`` for 4xx, ``server_error`` for 5xx."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.STATUS_CODE = status
        self.ERROR_TYPE = "invalid_request_error" if status < 500 else "server_error"


def error_from_result(error: dict[str, Any], status_code: int, request_id: str) -> FirstError:
    """Rebuild the error an engine returned (``{"error": {...}, "status_code"}``)."""
    classes: dict[int, type[FirstError]] = {
        400: BadRequestError,
        404: NotFoundError,
        413: PayloadTooLargeError,
        429: RateLimitError,
        503: UpstreamUnavailableError,
    }
    cls = classes.get(status_code, EngineFailedError)
    exc = cls(
        str(error.get("message") or "The engine refused the request."),
        param=error.get("param"),
        code=error.get("code"),
        request_id=request_id,
    )
    return exc


def error_from_body(error: dict[str, Any]) -> FirstError:
    """The tree's error for an OpenAI error object that travelled without its status (a
    stream's error frame): matched by ``code``, else by ``type``; a server error otherwise."""
    code, kind = error.get("code"), error.get("type")
    tree: list[type[FirstError]] = [
        ModelNotFoundError,
        AuthenticationError,
        PayloadTooLargeError,
        LengthRequiredError,
        StreamGoneError,
        RateLimitError,
        EngineFailedError,
        BadGatewayError,
        UpstreamUnavailableError,
        WaitTimeoutError,
    ]
    cls = next((c for c in tree if code is not None and c.CODE == code), None)
    if cls is None:
        by_type: dict[Any, type[FirstError]] = {
            "invalid_request_error": BadRequestError,
            "requests": RateLimitError,
            "timeout": WaitTimeoutError,
        }
        cls = by_type.get(kind, FirstError)
    return cls(
        str(error.get("message") or "The request failed."),
        param=error.get("param"),
        code=code,
        request_id=error.get("request_id"),
    )
