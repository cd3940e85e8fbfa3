"""``GET /openapi.json``: the public contract, an OpenAPI 3.1 document built from the code.

The routes come from the Chalice app (``app.routes``); what each one takes and answers comes from
``OPERATIONS``, one small entry per route and method, and the request bodies from the pydantic
models in ``chalicelib/protocol`` (``model_json_schema``; their ``$defs`` become
``components/schemas``). Every 4xx/5xx is the one OpenAI error object (``chalicelib/errors.py``),
in Anthropic's shape on the Messages API's routes.
A route the app serves but ``OPERATIONS`` does not describe is left out of the document and
named by ``undocumented`` (a unit test keeps that list empty); the WebSocket API, which is not
HTTP, is described under ``x-websocket``.

The document is built once per app and kept as JSON text: the routes cannot change after import.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from chalice.app import Chalice
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chalicelib.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from chalicelib.protocol.batches import CreateBatchRequest, CreateUploadRequest
from chalicelib.protocol.jobs import CreateJobRequest
from chalicelib.protocol.messages import CountTokensRequest, MessagesRequest
from chalicelib.protocol.responses import ResponsesRequest

REF = "#/components/schemas/{model}"
OBJECT: dict[str, Any] = {"type": "object"}

Auth = Literal["key", "operator", "none", "stream_token"]


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """One route and method: what it is, what it takes, what a success looks like."""

    summary: str
    tag: str
    # A JSON body: validated by this model (its schema goes to components), or this schema.
    body: type[BaseModel] | dict[str, Any] | None = None
    form: dict[str, Any] | None = None  # a multipart/form-data body, this schema
    auth: Auth = "key"
    query: tuple[Query, ...] = ()
    ok: dict[str, Any] = field(default_factory=lambda: {"application/json": OBJECT})
    ok_status: str = "200"
    prefer: bool = False  # takes ``Prefer: wait=N``
    description: str = ""
    # The error shape its 4xx/5xx take (chalicelib/http.py chooses it by route).
    dialect: Literal["openai", "anthropic"] = "openai"


# OpenAI's model object, plus the gateway's extras: what the model can do (the registry's
# capabilities) and, where the fleet is known, its warmth.
_MODEL: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by", "capabilities"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "capabilities": {
            "type": "object",
            "description": "What the model can do here, from the deployment registry.",
            "required": ["routes", "tools", "structured_outputs", "reasoning", "context_length"],
            "properties": {
                "routes": {
                    "type": "array",
                    "items": {"enum": ["chat", "completions", "embeddings"]},
                    "description": "The routes that serve it: /v1/chat/completions, "
                    "/v1/completions, /v1/embeddings.",
                },
                "tools": {"type": "boolean", "description": "tools and tool_choice on chat"},
                "structured_outputs": {
                    "type": "boolean",
                    "description": "response_format json_object and json_schema on chat",
                },
                "reasoning": {
                    "type": "boolean",
                    "description": "answers carry reasoning_content",
                },
                "context_length": {
                    "type": ["integer", "null"],
                    "description": "The context window in tokens; null when not configured.",
                },
            },
        },
        "status": {"enum": ["hot", "starting", "cold", "unavailable"]},
    },
}
_MODEL_OK = {"application/json": _MODEL}
_MODEL_LIST_OK = {
    "application/json": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
    }
}
_LIMIT = Query("limit", {"type": "integer", "minimum": 1}, "Items per page.")
_AFTER = Query("after", {"type": "string"}, "The last id of the previous page.")
_COMPLETION_OK = {
    "application/json": OBJECT,
    "text/event-stream": {
        "type": "string",
        "description": "With stream=true: the whole answer as server-sent events, buffered.",
    },
}
_FILE_FORM = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
        "purpose": {"type": "string", "enum": ["batch", "vision", "user_data"]},
    },
}
_RELAY_PUSH = {
    "type": "object",
    "required": ["seq", "chunks"],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "chunks": {"type": "array", "items": OBJECT},
    },
}

# Documenting a route is one entry here (the unit test names any route that lacks one).
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/health", "GET"): Operation(
        "Liveness",
        "meta",
        auth="none",
        ok={"application/json": {"type": "object", "properties": {"status": {"const": "ok"}}}},
    ),
    ("/openapi.json", "GET"): Operation("This document", "meta", auth="none"),
    ("/v1/models", "GET"): Operation("List the models", "models", ok=_MODEL_LIST_OK),
    ("/v1/models/{model}", "GET"): Operation(
        "Retrieve a model",
        "models",
        description="The id URL-encoded (`first%2Ftiny-chat`).",
        ok=_MODEL_OK,
    ),
    ("/v1/models/{model}/{name}", "GET"): Operation(
        "Retrieve a model whose id has a slash", "models", ok=_MODEL_OK
    ),
    ("/v1/models/{model}/warm", "GET"): Operation(
        "Retrieve a model whose id is `<model>/warm`", "models", ok=_MODEL_OK
    ),
    ("/v1/models/{model}/warm", "POST"): Operation(
        "Warm a model up (200 when hot, 202 while it starts)",
        "models",
        description="Starts loading the model on the router's choice of its deployments.",
    ),
    ("/v1/models/{model}/{name}/warm", "POST"): Operation(
        "Warm a model whose id has a slash", "models"
    ),
    ("/v1/endpoints", "GET"): Operation(
        "Every compute endpoint's status", "operators", auth="operator"
    ),
    ("/v1/dashboard/summary", "GET"): Operation(
        "The operator page's data: deployments, queue, traffic, top users, failures",
        "operators",
        auth="operator",
        query=(
            Query("window_s", {"type": "integer", "minimum": 60, "maximum": 86400}, "Seconds."),
        ),
    ),
    ("/dashboard", "GET"): Operation(
        "The operator page (a static shell; its data needs an operator's key)",
        "operators",
        auth="none",
        ok={"text/html": {"type": "string"}},
    ),
    ("/dashboard/{name}", "GET"): Operation(
        "The operator page's scripts and styles", "operators", auth="none", ok={"*/*": {}}
    ),
    ("/v1/chat/completions", "POST"): Operation(
        "Create a chat completion",
        "completions",
        body=ChatCompletionRequest,
        ok=_COMPLETION_OK,
        prefer=True,
    ),
    ("/v1/completions", "POST"): Operation(
        "Create a completion",
        "completions",
        body=CompletionRequest,
        ok=_COMPLETION_OK,
        prefer=True,
    ),
    ("/v1/embeddings", "POST"): Operation(
        "Create embeddings", "completions", body=EmbeddingRequest, prefer=True
    ),
    ("/v1/messages", "POST"): Operation(
        "Create a message (Anthropic's Messages API)",
        "completions",
        body=MessagesRequest,
        prefer=True,
        dialect="anthropic",
        description="The key goes in `x-api-key` or `Authorization: Bearer`; `anthropic-version`"
        " and `anthropic-beta` are accepted. `stream: true` answers Anthropic's events "
        "(buffered over plain HTTP). Errors come in Anthropic's shape.",
    ),
    ("/v1/messages/count_tokens", "POST"): Operation(
        "Count a Messages body's input tokens with the model's tokenizer and template",
        "completions",
        body=CountTokensRequest,
        ok={"application/json": {"type": "object", "required": ["input_tokens"]}},
        dialect="anthropic",
        description="Runs the conversation's prompt on the model for one token: it counts "
        "in usage and limits as one small request.",
    ),
    ("/v1/responses", "POST"): Operation(
        "Create a model response (stored under you unless store is false; background queues it)",
        "responses",
        body=ResponsesRequest,
        ok=_COMPLETION_OK,
        prefer=True,
    ),
    ("/v1/responses/{response_id}", "GET"): Operation("Retrieve a stored response", "responses"),
    ("/v1/responses/{response_id}", "DELETE"): Operation("Delete a stored response", "responses"),
    ("/v1/responses/{response_id}/input_items", "GET"): Operation(
        "A stored response's input items",
        "responses",
        query=(_LIMIT, _AFTER, Query("order", {"type": "string", "enum": ["asc", "desc"]})),
    ),
    ("/v1/responses/{response_id}/cancel", "POST"): Operation(
        "Cancel a background response", "responses"
    ),
    ("/v1/requests/{request_id}", "GET"): Operation(
        "Your own request: its status and, when done, its result", "completions"
    ),
    ("/v1/usage", "GET"): Operation(
        "Your usage: requests, tokens and errors over a range (operators: anyone's)",
        "usage",
        query=(
            Query(
                "start", {"type": "integer", "minimum": 0}, "Unix seconds (default: end - 24 h)."
            ),
            Query(
                "end", {"type": "integer", "minimum": 0}, "Unix seconds, exclusive (default: now)."
            ),
            Query(
                "group_by",
                {"type": "string", "enum": ["model", "day", "user", "function"]},
                "function: the route (chat_completions, responses, messages, ...); "
                "user: operators only.",
            ),
            Query("user", {"type": "string"}, "Operators only: this user's usage."),
        ),
    ),
    ("/relay/push", "POST"): Operation(
        "An HPC function's streamed chunks (capability token, not an API key)",
        "streaming",
        auth="stream_token",
        body=_RELAY_PUSH,
        ok={"application/json": {"type": "object", "required": ["seq", "frames"]}},
    ),
    ("/v1/files", "POST"): Operation("Upload a file", "batch", form=_FILE_FORM),
    ("/v1/files", "GET"): Operation(
        "List your files",
        "batch",
        query=(
            _LIMIT,
            _AFTER,
            Query("order", {"type": "string", "enum": ["asc", "desc"]}),
            Query("purpose", {"type": "string"}),
        ),
    ),
    ("/v1/files/uploads", "POST"): Operation(
        "Start a large upload: a presigned POST to S3", "batch", body=CreateUploadRequest
    ),
    ("/v1/files/{file_id}", "GET"): Operation("Retrieve a file", "batch"),
    ("/v1/files/{file_id}", "DELETE"): Operation("Delete a file", "batch"),
    ("/v1/files/{file_id}/content", "GET"): Operation(
        "A file's content (a 307 to S3 when large)",
        "batch",
        ok={"application/jsonl": {"type": "string"}},
    ),
    ("/v1/batches", "POST"): Operation("Create a batch", "batch", body=CreateBatchRequest),
    ("/v1/batches", "GET"): Operation("List your batches", "batch", query=(_LIMIT, _AFTER)),
    ("/v1/batches/{batch_id}", "GET"): Operation("Retrieve a batch", "batch"),
    ("/v1/batches/{batch_id}/cancel", "POST"): Operation("Cancel a batch", "batch"),
    ("/v1/functions", "GET"): Operation("List the HPC functions you may call", "jobs"),
    ("/v1/jobs", "POST"): Operation(
        "Run an HPC function as a job (answered at once, queued)", "jobs", body=CreateJobRequest
    ),
    ("/v1/jobs", "GET"): Operation("List your jobs", "jobs", query=(_LIMIT, _AFTER)),
    ("/v1/jobs/{job_id}", "GET"): Operation("Retrieve a job (progress, result)", "jobs"),
    ("/v1/jobs/{job_id}/cancel", "POST"): Operation("Cancel a job", "jobs"),
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
        }
    },
}

# Anthropic's error object (``FirstError.to_anthropic_body``), on the Messages API's routes.
ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "request_id": {"type": "string"},
    },
}
_ERROR_RESPONSES = {
    "openai": "#/components/responses/Error",
    "anthropic": "#/components/responses/AnthropicError",
}

WEBSOCKET = {
    "description": (
        "Real streaming over API Gateway's WebSocket API (its URL is the stage's "
        "`FIRST_WEBSOCKET_URL`; README, 'Streaming'). Connect with `Authorization: Bearer KEY` "
        "or `?token=KEY`; a refused handshake answers the HTTP error status with an OpenAI "
        "error body. Send `message` frames; the server answers with `chunk`, then `done` or "
        "`error` frames carrying your `id`. Many requests may be in flight on one connection."
    ),
    "message": {
        "type": "object",
        "required": ["action", "body"],
        "properties": {
            "action": {"enum": ["chat.completions", "completions", "messages", "responses"]},
            "id": {"type": "string", "maxLength": 128},
            "body": {
                "oneOf": [
                    {"$ref": "#/components/schemas/ChatCompletionRequest"},
                    {"$ref": "#/components/schemas/CompletionRequest"},
                    {"$ref": "#/components/schemas/ResponsesRequest"},
                    {"$ref": "#/components/schemas/MessagesRequest"},
                ]
            },
        },
    },
    "frames": {
        "chunk": {"type": "chunk", "id": "…", "request_id": "…", "seq": 1, "part": 0, "data": {}},
        "done": {"type": "done", "id": "…", "request_id": "…", "usage": {}, "timing": {}},
        "error": {"type": "error", "id": "…", "request_id": None, "error": {}, "status": 400},
    },
}

_AUTH_NOTE = {
    "operator": "Operators only (members of FIRST_OPERATOR_GROUPS): others get 403.",
    "stream_token": "Bearer the request's capability token; API keys are refused (401).",
}


def _parameters(path_args: list[str], op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in path_args
    ]
    params += [
        {"name": q.name, "in": "query", "required": False, "schema": q.schema}
        | ({"description": q.description} if q.description else {})
        for q in op.query
    ]
    if op.prefer:
        params.append(
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`wait=N` (RFC 7240): answer within N seconds, else a 504 "
                "naming the request (default and maximum 25).",
                "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
            }
        )
    return params


def _operation(path: str, method: str, view: str, args: list[str], op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": f"{view}_{method.lower()}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": {
            op.ok_status: {
                "description": "Success",
                "content": {t: {"schema": s} for t, s in op.ok.items()},
            },
            "4XX": {"$ref": _ERROR_RESPONSES[op.dialect]},
            "5XX": {"$ref": _ERROR_RESPONSES[op.dialect]},
        },
    }
    description = " ".join(d for d in (op.description, _AUTH_NOTE.get(op.auth, "")) if d)
    if description:
        out["description"] = description
    if op.auth == "none":
        out["security"] = []
    params = _parameters(args, op)
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema = (
            op.body if isinstance(op.body, dict) else {"$ref": REF.format(model=op.body.__name__)}
        )
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif op.form is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": op.form}},
        }
    if path.endswith("/content"):
        out["responses"]["307"] = {"description": "A presigned S3 URL in Location (large files)"}
    return out


def undocumented(app: Chalice) -> list[tuple[str, str]]:
    """Routes the app serves that ``OPERATIONS`` does not describe."""
    return sorted(
        (path, method)
        for path, methods in app.routes.items()
        for method in methods
        if (path, method) not in OPERATIONS
    )


def build(app: Chalice) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes."""
    models = {op.body for op in OPERATIONS.values() if isinstance(op.body, type)}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for path, methods in sorted(app.routes.items()):
        for method, entry in sorted(methods.items()):
            op = OPERATIONS.get((path, method))
            if op is None:
                continue  # undocumented(app) names it
            paths.setdefault(path, {})[method.lower()] = _operation(
                path, method, entry.view_name, list(entry.view_args), op
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "FIRST",
            "version": "1",
            "description": "An OpenAI-compatible inference gateway (README, 'API').",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {
                **defs.get("$defs", {}),
                "Error": ERROR_SCHEMA,
                "AnthropicError": ANTHROPIC_ERROR_SCHEMA,
            },
            "responses": {
                "Error": {
                    "description": "An OpenAI error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
                "AnthropicError": {
                    "description": "An Anthropic error (the Messages API's routes)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/AnthropicError"}
                        }
                    },
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`first keys create`) or a Globus token.",
                }
            },
        },
        "x-websocket": WEBSOCKET,
    }


@functools.lru_cache(maxsize=4)
def document_text(app: Chalice) -> str:
    return json.dumps(build(app), separators=(",", ":"))
