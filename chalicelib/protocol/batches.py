"""OpenAI Files and Batches: the create-batch body, the objects as OpenAI renders them, and the
validation of one input line (pure; the batch worker streams the file through it).

An input line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}``; an
output line ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.

A ``/v1/responses`` or ``/v1/messages`` line (OpenAI's Batch API takes Responses lines) is a
dialect of chat, as on its route: its body is translated to chat by the route's own pure
translator (``LineDialect.to_chat``), what rendering its answer needs rides beside it in the shard
(``render``: the ``response`` skeleton, or the message's model and stop sequences), and when the
batch is finalized each output body is rendered back in the line's dialect (``LineDialect.render``).
A stored conversation (``previous_response_id``) and ``background`` have no meaning in a batch:
a line that asks for one is refused; Responses lines are not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationError

from chalicelib.errors import BadRequestError
from chalicelib.protocol import responses as rp
from chalicelib.protocol.bounds import MAX_FILENAME_BYTES
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import GatewayRequest, OpenAIModel, load_json
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest
from chalicelib.protocol.messages import MessagesRequest, to_message
from chalicelib.protocol.messages_stream import MESSAGES
from chalicelib.protocol.responses_stream import RESPONSES


@dataclass(frozen=True)
class LineDialect:
    """A batch line's dialect other than chat: how its body becomes chat, and back."""

    # The route's name (usage records count the batch's lines under it).
    route: str
    # The line's body → (the chat request the engine runs, what ``render`` needs of the line).
    to_chat: Callable[[dict[str, Any]], tuple[ChatCompletionRequest, dict[str, Any]]]
    # (what ``to_chat`` kept, the chat completion, the line's request id) → the dialect's body.
    render: Callable[[dict[str, Any], dict[str, Any], str], dict[str, Any]]


def _responses_to_chat(body: dict[str, Any]) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    req = rp.ResponsesRequest.model_validate(body)
    if req.previous_response_id is not None:
        raise BadRequestError(
            "previous_response_id is not supported in a batch: send the whole conversation "
            "as input.",
            param="previous_response_id",
        )
    if req.background:
        raise BadRequestError("background is not supported in a batch.", param="background")
    # Not stored: a batch's answers live in its output file.
    base = {**rp.skeleton(req, rp.new_response_id()), "store": False}
    return rp.to_chat(req), base


def _responses_render(
    base: dict[str, Any], chat: dict[str, Any], _request_id: str
) -> dict[str, Any]:
    return rp.response_from_chat(base, chat)


def _messages_to_chat(body: dict[str, Any]) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    req = MessagesRequest.model_validate(body)
    return req.to_chat(), {"model": req.model, "stop_sequences": req.stop_sequences}


def _messages_render(kept: dict[str, Any], chat: dict[str, Any], request_id: str) -> dict[str, Any]:
    # What to_message reads of its request: the model and the stop sequences (kept, validated).
    req = MessagesRequest.model_construct(
        model=kept["model"], stop_sequences=kept.get("stop_sequences")
    )
    return to_message(chat, req, request_id)


DIALECTS: dict[str, LineDialect] = {
    "/v1/responses": LineDialect(RESPONSES.name, _responses_to_chat, _responses_render),
    "/v1/messages": LineDialect(MESSAGES.name, _messages_to_chat, _messages_render),
}

# A batch's route (the line's ``url``; OpenAI's Batch API calls it the batch's "endpoint", the
# public field name kept in requests and answers) → (gateway function, request model). A
# dialect's lines run as chat (``DIALECTS`` translates them).
ROUTES: dict[str, tuple[str, type[GatewayRequest]]] = {
    "/v1/chat/completions": ("chat_completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
    "/v1/embeddings": ("embeddings", EmbeddingRequest),
    **{url: ("chat_completions", ChatCompletionRequest) for url in DIALECTS},
}


def route_of(route: str | None) -> str:
    """The name a batch's lines are counted under (usage records' ``function``): its function,
    or its dialect's route's name."""
    if route in DIALECTS:
        return DIALECTS[route].route
    return ROUTES[route][0] if route in ROUTES else ""


def render_output_line(dialect: LineDialect, line: dict[str, Any], kept: dict[str, Any]) -> None:
    """An output line's chat completion, rendered in place in the line's dialect (error lines
    keep OpenAI's batch error body)."""
    response = line.get("response") or {}
    if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
        response["body"] = dialect.render(kept, response["body"], str(response.get("request_id")))


COMPLETION_WINDOW_S = 24 * 3600
# errors.data lists at most this many problems; the last one's message counts the rest.
MAX_LISTED_ERRORS = 100


class CreateBatchRequest(OpenAIModel):
    input_file_id: str = Field(min_length=1)
    endpoint: Literal[
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"
    ]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None


class CreateUploadRequest(OpenAIModel):
    """``POST /v1/files/uploads``: checked field by field in ``BatchApi.create_upload``; the
    model is its schema in ``GET /openapi.json``."""

    filename: str = Field(
        min_length=1,
        max_length=MAX_FILENAME_BYTES,
        description=f"At most {MAX_FILENAME_BYTES} bytes of UTF-8, no control characters.",
    )
    purpose: Literal["batch", "vision"]


def file_object(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["file_id"],
        "object": "file",
        "bytes": int(record.get("bytes") or 0),
        "created_at": int(record["created_at"]),
        "filename": record.get("filename") or "",
        "purpose": record.get("purpose") or "batch",
        "status": record.get("status") or "processed",
        "expires_at": record.get("expires_at"),
        "status_details": record.get("status_details"),
    }


_STAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def batch_object(record: dict[str, Any]) -> dict[str, Any]:
    errors = record.get("errors")
    return {
        "id": record["batch_id"],
        "object": "batch",
        "endpoint": record["endpoint"],
        "model": record.get("model"),
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record.get("completion_window", "24h"),
        "status": record["status"],
        "output_file_id": record.get("output_file_id"),
        "error_file_id": record.get("error_file_id"),
        "created_at": int(record["created_at"]),
        "expires_at": record.get("expires_at"),
        **{stamp: record.get(stamp) for stamp in _STAMPS},
        "request_counts": {
            "total": int(record.get("total") or 0),
            "completed": int(record.get("completed_count") or 0),
            "failed": int(record.get("failed_count") or 0),
        },
        "metadata": record.get("metadata"),
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@dataclass
class LineChecker:
    """Checks a batch file line by line; keeps only what must be remembered across lines (the
    custom_ids seen, the model) and the first ``MAX_LISTED_ERRORS`` problems.

    ``may_use(model)`` says whether the caller may use ``model`` for the batch's route;
    ``ceiling(request)`` raises ``BadRequestError`` for a request over the model's limits.
    """

    route: str
    may_use: Any
    ceiling: Any = None
    max_requests: int = 50_000
    model: str | None = None
    lines: int = 0
    requests: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    _seen: set[str] = field(default_factory=set)

    def check(self, raw: bytes) -> dict[str, Any] | None:
        """The next line as ``{"custom_id", "body"}`` (the engine body), or None (blank or bad)."""
        self.lines += 1
        if not raw.strip():
            return None
        self.requests += 1
        if self.requests == self.max_requests + 1:
            self._error(
                "too_many_requests",
                f"The file has more than {self.max_requests} requests.",
                None,
            )
        try:
            return self._check(raw)
        except _LineError as exc:
            self._error(exc.code, exc.message, exc.param)
            return None

    def _check(self, raw: bytes) -> dict[str, Any]:
        try:
            line = load_json(raw)
        except BadRequestError as exc:
            message = exc.message.replace("request body", "line")
            raise _LineError("invalid_json_line", message) from None
        if not isinstance(line, dict):
            raise _LineError("invalid_json_line", "The line must be a JSON object.")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise _LineError(
                "missing_custom_id", "custom_id must be a non-empty string.", "custom_id"
            )
        if custom_id in self._seen:
            raise _LineError(
                "duplicate_custom_id", f"custom_id '{custom_id}' is used twice.", "custom_id"
            )
        self._seen.add(custom_id)
        if line.get("method", "POST") != "POST":
            raise _LineError("invalid_method", "method must be POST.", "method")
        if not self.route and line.get("url") in ROUTES:
            self.route = str(line["url"])  # the drop folder: the first line names it
        if line.get("url") != self.route:
            raise _LineError(
                "mismatched_endpoint",
                f"url must be the batch's endpoint {self.route or list(ROUTES)}, "
                f"not {line.get('url')!r}.",
                "url",
            )
        body = line.get("body")
        if not isinstance(body, dict):
            raise _LineError("invalid_body", "body must be a JSON object.", "body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _LineError("missing_model", "body.model is required.", "body.model")
        if self.model is None:
            if not self.may_use(model):
                raise _LineError(
                    "model_not_found",
                    f"The model '{model}' does not exist or is not served for {self.route}.",
                    "body.model",
                )
            self.model = model
        elif model != self.model:
            raise _LineError(
                "mismatched_model",
                f"Every line must use one model ('{self.model}'), not '{model}'.",
                "body.model",
            )
        if body.get("stream"):
            raise _LineError("invalid_body", "stream is not supported in a batch.", "body.stream")
        _, request_model = ROUTES[self.route]
        dialect = DIALECTS.get(self.route)
        kept: dict[str, Any] | None = None
        req: GatewayRequest
        try:
            if dialect is not None:
                req, kept = dialect.to_chat(body)
            else:
                req = request_model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(["body", *(str(p) for p in first["loc"])])
            raise _LineError("invalid_body", f"Invalid {param}: {first['msg']}", param) from None
        except BadRequestError as exc:  # what the model's own checks refuse (tools, formats)
            where = f"body.{exc.param}" if exc.param else "body"
            raise _LineError("invalid_body", exc.message, where) from None
        if self.ceiling is not None:
            try:
                self.ceiling(req)
            except BadRequestError as exc:
                raise _LineError("invalid_body", exc.message, f"body.{exc.param}") from None
        line = {"custom_id": custom_id, "body": req.engine_body()}
        return line if kept is None else {**line, "render": kept}

    def _error(self, code: str, message: str, param: str | None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(
                {"code": code, "line": self.lines, "message": message, "param": param}
            )

    def file_too_large(self, max_bytes: int) -> None:
        """The file passed ``max_bytes`` on the line about to be checked (reading stops there)."""
        self.lines += 1
        self._error("file_too_large", f"The file is larger than {max_bytes} bytes.", None)

    def finish(self) -> list[dict[str, Any]]:
        """The errors of the whole file (empty: it is valid). Past ``MAX_LISTED_ERRORS``, the
        last listed error's message says how many more were found."""
        if self.requests == 0 and not self.errors:
            self._error("empty_file", "The file has no requests.", None)
        unlisted = self.error_count - len(self.errors)
        if unlisted > 0:
            last = self.errors[-1]
            last["message"] = f"{last['message']} ({unlisted} more errors are not listed.)"
        return self.errors


class _LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
