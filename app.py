"""The FIRST API: wiring and thin routes only; ``chalicelib`` does the work."""

from __future__ import annotations

from typing import Any

from chalice.app import CloudWatchEvent, Rate, Request, Response, WebsocketEvent

from chalicelib import affinity, openapi
from chalicelib.auth import Principal, api_key_token, bearer_token
from chalicelib.dashboard import assets as dashboard_assets
from chalicelib.dashboard import data as dashboard_data
from chalicelib.fleet import require_operator
from chalicelib.gateway import Completed
from chalicelib.http import (
    JSON,
    ThreadSafeChalice,
    check_size,
    json_response,
    openai_errors,
    openai_route,
    preferred_wait_s,
)
from chalicelib.logs import get_logger
from chalicelib.models_view import model_id_from_path, retrieve_model
from chalicelib.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    dialects,
    parse_body,
)
from chalicelib.protocol.common import GatewayRequest, SamplingFields
from chalicelib.protocol.messages import (
    CountTokensRequest,
    MessagesRequest,
    message_id,
    to_message,
)
from chalicelib.protocol.messages_stream import MESSAGES, stream_state
from chalicelib.services import Services
from chalicelib.usage_view import usage as usage_summary

app = ThreadSafeChalice(app_name="first")
# The WebSocket routes below (streaming, issue 8) are behind Chalice's feature flag.
app.experimental_feature_flags.update({"WEBSOCKETS"})
services = Services()
logger = get_logger("first-api")


def _request() -> Request:
    """The request being served; Chalice sets it before any view runs."""
    request = app.current_request
    if request is None:  # only reachable outside a request: a wiring bug, not a client error
        raise RuntimeError("no current request")
    return request


# Metrics per route call; a model dimension only for the registry's models.
route = openai_route(logger, _request, services.api_metrics, lambda: services.registry.model_ids())
app.register_middleware(openai_errors, "http")
# Bodies are parsed as JSON whatever they are labelled (`curl -d` sends form encoding), so a
# mislabelled body gets an OpenAI 400 rather than Chalice's own 415.
BODY_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain"]


def _principal(log: dict[str, Any]) -> Principal:
    principal = services.authenticator.authenticate(bearer_token(_request().headers))
    log["user"] = principal.id
    return principal


def _completion(log: dict[str, Any], function: str, model: type[GatewayRequest]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    req = parse_body(raw, model)
    log["model"] = req.model
    wait_s = preferred_wait_s(_request().headers)
    session_id = affinity.session_id(_request().headers)
    done: Completed = services.gateway.run(principal, function, req, wait_s, session_id)
    usage = done.response.get("usage") or {}
    log.update(
        request_id=done.request_id,
        engine_time_ms=done.engine_time_ms,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )
    headers = {**done.headers, "x-request-id": done.request_id}
    if done.engine_time_ms is not None:
        headers["x-first-engine-time-ms"] = f"{done.engine_time_ms:.2f}"
    if done.endpoint:
        headers["x-first-endpoint"] = done.endpoint
    if isinstance(req, SamplingFields) and req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Response(
            body=dialects.render_buffered(
                dialects.CHAT, {"include_usage": include_usage}, done.response
            ),
            status_code=200,
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
    return json_response(done.response, headers=headers)


@app.route("/health", methods=["GET"])
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.route("/openapi.json", methods=["GET"])
@route
def openapi_document(log: dict[str, Any]) -> Response:
    """The public contract (chalicelib/openapi.py); no key needed."""
    return Response(body=openapi.document_text(app), status_code=200, headers={**JSON})


@app.route("/v1/models", methods=["GET"])
@route
def list_models(log: dict[str, Any]) -> Response:
    return json_response(services.gateway.list_models(_principal(log)))


# The SDK sends `/v1/models/first%2Ftiny-chat`; curl users type the slash. API Gateway allows one
# variable name per path level, hence `{model}` for the first segment of both routes.
@app.route("/v1/models/{model}", methods=["GET"])
@route
def retrieve_model_route(log: dict[str, Any], model: str) -> Response:
    return _retrieve(log, model_id_from_path(model))


@app.route("/v1/models/{model}/{name}", methods=["GET"])
@route
def retrieve_model_by_path(log: dict[str, Any], model: str, name: str) -> Response:
    return _retrieve(log, model_id_from_path(model, name))


# API Gateway matches `/v1/models/{model}/warm` before `/{model}/{name}` for every method: a GET
# there retrieves the model `<model>/warm`, as the slashed route does for any other name.
@app.route("/v1/models/{model}/warm", methods=["GET"])
@route
def retrieve_model_named_warm(log: dict[str, Any], model: str) -> Response:
    return _retrieve(log, model_id_from_path(model, "warm"))


def _retrieve(log: dict[str, Any], model_id: str) -> Response:
    principal = _principal(log)
    log["model"] = model_id
    return json_response(
        services.fleet.annotate(retrieve_model(services.registry, principal, model_id))
    )


@app.route("/v1/models/{model}/warm", methods=["POST"], content_types=BODY_TYPES)
@route
def warm_model(log: dict[str, Any], model: str) -> Response:
    return _warm(log, model_id_from_path(model))


@app.route("/v1/models/{model}/{name}/warm", methods=["POST"], content_types=BODY_TYPES)
@route
def warm_model_by_path(log: dict[str, Any], model: str, name: str) -> Response:
    return _warm(log, model_id_from_path(model, name))


def _warm(log: dict[str, Any], model_id: str) -> Response:
    principal = _principal(log)
    log["model"] = model_id
    warming = services.gateway.warm(principal, model_id)
    return json_response(warming.body(), 200 if warming.status == "hot" else 202)


@app.route("/v1/endpoints", methods=["GET"])
@route
def list_endpoints(log: dict[str, Any]) -> Response:
    require_operator(_principal(log), services.settings.operator_groups)
    return json_response(services.fleet.endpoints())


@app.route("/v1/chat/completions", methods=["POST"], content_types=BODY_TYPES)
@route
def chat_completions(log: dict[str, Any]) -> Response:
    return _completion(log, "chat_completions", ChatCompletionRequest)


@app.route("/v1/completions", methods=["POST"], content_types=BODY_TYPES)
@route
def completions(log: dict[str, Any]) -> Response:
    return _completion(log, "completions", CompletionRequest)


@app.route("/v1/embeddings", methods=["POST"], content_types=BODY_TYPES)
@route
def embeddings(log: dict[str, Any]) -> Response:
    return _completion(log, "embeddings", EmbeddingRequest)


# Anthropic's Messages API (chalicelib/protocol/messages.py): translated to chat, run on the one
# submission path, answered (errors too: chalicelib/http.py) in Anthropic's shape.
def _anthropic_principal(log: dict[str, Any]) -> Principal:
    principal = services.authenticator.authenticate(api_key_token(_request().headers))
    log["user"] = principal.id
    return principal


@app.route("/v1/messages", methods=["POST"], content_types=BODY_TYPES)
@route
def messages(log: dict[str, Any]) -> Response:
    principal = _anthropic_principal(log)
    req = parse_body(check_size(_request(), services.settings.max_body_bytes), MessagesRequest)
    log["model"] = req.model
    chat = req.to_chat()
    done = services.gateway.run(
        principal,
        "chat_completions",
        chat,
        preferred_wait_s(_request().headers),
        route=MESSAGES.name,
    )
    message = to_message(done.response, req, done.request_id)
    log.update(
        request_id=done.request_id,
        engine_time_ms=done.engine_time_ms,
        prompt_tokens=message["usage"]["input_tokens"],
        completion_tokens=message["usage"]["output_tokens"],
    )
    headers = {**done.headers, "x-request-id": done.request_id, "request-id": done.request_id}
    if req.stream:
        state = stream_state(message_id(done.request_id), req.model, req.stop_sequences)
        state["input_tokens"] = message["usage"]["input_tokens"]
        return Response(
            body=dialects.render_buffered(MESSAGES, state, done.response),
            status_code=200,
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
    return json_response(message, headers=headers)


# The model's own tokenizer and chat template are on the HPC node, not in the Lambda: the count
# is the prompt of the same chat request, run for one token (docs: "Anthropic Messages API").
@app.route("/v1/messages/count_tokens", methods=["POST"], content_types=BODY_TYPES)
@route
def count_message_tokens(log: dict[str, Any]) -> Response:
    principal = _anthropic_principal(log)
    req = parse_body(check_size(_request(), services.settings.max_body_bytes), CountTokensRequest)
    log["model"] = req.model
    done = services.gateway.run(
        principal, "chat_completions", req.to_chat(max_tokens=1), route=MESSAGES.name
    )
    input_tokens = int((done.response.get("usage") or {}).get("prompt_tokens") or 0)
    log.update(request_id=done.request_id, prompt_tokens=input_tokens)
    return json_response({"input_tokens": input_tokens}, headers={"request-id": done.request_id})


# ----- the Responses API (chalicelib/responses_api.py; docs: "Responses API") -----------------


@app.route("/v1/responses", methods=["POST"], content_types=BODY_TYPES)
@route
def create_response(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    made = services.responses.create(principal, raw, preferred_wait_s(_request().headers))
    usage = made.usage or {}
    log.update(
        request_id=made.request_id,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )
    headers = {**made.headers, **({"x-request-id": made.request_id} if made.request_id else {})}
    if isinstance(made.body, str):
        stream = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return Response(body=made.body, status_code=200, headers={**headers, **stream})
    return json_response(made.body, headers=headers)


@app.route("/v1/responses/{response_id}", methods=["GET", "DELETE"])
@route
def response_route(log: dict[str, Any], response_id: str) -> Response:
    principal = _principal(log)
    if _request().method == "DELETE":
        return json_response(services.responses.delete(principal, response_id))
    return json_response(services.responses.retrieve(principal, response_id))


@app.route("/v1/responses/{response_id}/input_items", methods=["GET"])
@route
def response_input_items(log: dict[str, Any], response_id: str) -> Response:
    principal = _principal(log)
    return json_response(services.responses.input_items(principal, response_id, _query()))


@app.route("/v1/responses/{response_id}/cancel", methods=["POST"], content_types=BODY_TYPES)
@route
def cancel_response(log: dict[str, Any], response_id: str) -> Response:
    return json_response(services.responses.cancel(_principal(log), response_id))


@app.route("/v1/requests/{request_id}", methods=["GET"])
@route
def get_request(log: dict[str, Any], request_id: str) -> Response:
    log["request_id"] = request_id
    return json_response(services.gateway.fetch(_principal(log), request_id))


# ----- HPC functions as jobs (chalicelib/jobs.py; docs/hpc.md "Jobs") ------------------------


@app.route("/v1/functions", methods=["GET"])
@route
def list_functions(log: dict[str, Any]) -> Response:
    return json_response(services.jobs.list_functions(_principal(log)))


@app.route("/v1/jobs", methods=["POST"], content_types=BODY_TYPES)
@route
def create_job(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    job = services.jobs.submit(principal, raw)
    log.update(request_id=job["id"], function=job["function"])
    return json_response(job)


@app.route("/v1/jobs", methods=["GET"])
@route
def list_jobs(log: dict[str, Any]) -> Response:
    return json_response(services.jobs.list(_principal(log), _query()))


@app.route("/v1/jobs/{job_id}", methods=["GET"])
@route
def retrieve_job(log: dict[str, Any], job_id: str) -> Response:
    log["request_id"] = job_id
    return json_response(services.jobs.get(_principal(log), job_id))


@app.route("/v1/jobs/{job_id}/cancel", methods=["POST"], content_types=BODY_TYPES)
@route
def cancel_job(log: dict[str, Any], job_id: str) -> Response:
    log["request_id"] = job_id
    return json_response(services.jobs.cancel(_principal(log), job_id))


@app.route("/v1/usage", methods=["GET"])
@route
def get_usage(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    groups = services.settings.operator_groups
    return json_response(usage_summary(services.usage, principal, _query(), groups))


# -- streaming: API Gateway's WebSocket API and the stream relay (chalicelib/streaming) --------


@app.on_ws_connect()
def ws_connect(event: WebsocketEvent) -> dict[str, Any]:
    return services.streams.connect(event.connection_id, event.to_dict())


@app.on_ws_message()
def ws_message(event: WebsocketEvent) -> None:
    try:
        services.streams.message(event.connection_id, event.body)
    finally:
        services.api_metrics.flush()  # StreamRequests / StreamRefusals, before Lambda freezes


@app.on_ws_disconnect()
def ws_disconnect(event: WebsocketEvent) -> None:
    services.streams.disconnect(event.connection_id)


@app.route("/relay/push", methods=["POST"], content_types=BODY_TYPES)
@route
def relay_push(log: dict[str, Any]) -> Response:
    """An HPC function's coalesced chunks, authorized by the request's capability token."""
    raw = check_size(_request(), services.settings.max_body_bytes)
    delivery = services.relay.push(bearer_token(_request().headers), raw)
    log.update(request_id=delivery.request_id, seq=delivery.seq, frames=delivery.posted)
    answer: dict[str, Any] = {"seq": delivery.seq, "frames": delivery.posted}
    if delivery.state is not None:
        answer["state"] = delivery.state  # the stream dialect's, for the next push
    return json_response(answer)


# ----- Files and Batches (chalicelib/batch; docs/operations.md "Batch") ----------------------

FORM_TYPES = ["multipart/form-data"]
# API Gateway passes a multipart body to the Lambda base64-encoded only for binary media types.
app.api.binary_types.extend(t for t in FORM_TYPES if t not in app.api.binary_types)


def _query() -> dict[str, str]:
    return dict(_request().query_params or {})


@app.route("/v1/files", methods=["POST"], content_types=FORM_TYPES)
@route
def upload_file(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    content_type = _request().headers.get("content-type", "")
    return json_response(services.batch_api.upload(principal, content_type, raw))


# Files larger than the API's payload limit: a presigned POST straight to S3 (README, "Batch").
@app.route("/v1/files/uploads", methods=["POST"], content_types=BODY_TYPES)
@route
def create_file_upload(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    return json_response(services.batch_api.create_upload(principal, raw))


@app.route("/v1/files", methods=["GET"])
@route
def list_files(log: dict[str, Any]) -> Response:
    return json_response(services.batch_api.list_files(_principal(log), _query()))


@app.route("/v1/files/{file_id}", methods=["GET", "DELETE"])
@route
def file_route(log: dict[str, Any], file_id: str) -> Response:
    principal = _principal(log)
    if _request().method == "DELETE":
        return json_response(services.batch_api.delete_file(principal, file_id))
    return json_response(services.batch_api.get_file(principal, file_id))


@app.route("/v1/files/{file_id}/content", methods=["GET"])
@route
def file_content(log: dict[str, Any], file_id: str) -> Response:
    content = services.batch_api.file_content(_principal(log), file_id)
    if content.redirect_url is not None:
        return Response(body="", status_code=307, headers={"Location": content.redirect_url})
    return Response(
        body=(content.data or b"").decode("utf-8", "replace"),
        status_code=200,
        headers={"Content-Type": "application/jsonl"},
    )


@app.route("/v1/batches", methods=["POST"], content_types=BODY_TYPES)
@route
def create_batch(log: dict[str, Any]) -> Response:
    principal = _principal(log)
    raw = check_size(_request(), services.settings.max_body_bytes)
    batch = services.batch_api.create_batch(principal, raw)
    log["batch_id"] = batch["id"]
    return json_response(batch)


@app.route("/v1/batches", methods=["GET"])
@route
def list_batches(log: dict[str, Any]) -> Response:
    return json_response(services.batch_api.list_batches(_principal(log), _query()))


@app.route("/v1/batches/{batch_id}", methods=["GET"])
@route
def retrieve_batch(log: dict[str, Any], batch_id: str) -> Response:
    log["batch_id"] = batch_id
    return json_response(services.batch_api.get_batch(_principal(log), batch_id))


@app.route("/v1/batches/{batch_id}/cancel", methods=["POST"], content_types=BODY_TYPES)
@route
def cancel_batch(log: dict[str, Any], batch_id: str) -> Response:
    log["batch_id"] = batch_id
    return json_response(services.batch_api.cancel_batch(_principal(log), batch_id))


# ----- housekeeping (EventBridge schedules; the offline stack's scheduler runs them too) -----


@app.schedule(Rate(1, unit=Rate.HOURS))
def sweep_reply_queues(event: CloudWatchEvent) -> dict[str, Any]:
    """Delete reply queues idle for ``reply_queue_idle_s`` (chalicelib/stores/sweeper.py)."""
    return services.reply_sweeper.sweep().as_dict()


# ----- the operator page (chalicelib/dashboard; docs/operations.md "Dashboard") --------------


# The shell and its scripts hold no data and need no key (a page load cannot send a bearer
# header); the page asks for an operator's key and reads the summary route with it.
@app.route("/dashboard", methods=["GET"])
@route
def dashboard_page(log: dict[str, Any]) -> Response:
    text, headers = dashboard_assets.asset("index.html")
    return Response(body=text, status_code=200, headers=headers)


@app.route("/dashboard/{name}", methods=["GET"])
@route
def dashboard_file(log: dict[str, Any], name: str) -> Response:
    text, headers = dashboard_assets.asset(name)
    return Response(body=text, status_code=200, headers=headers)


@app.route("/v1/dashboard/summary", methods=["GET"])
@route
def dashboard_summary(log: dict[str, Any]) -> Response:
    require_operator(_principal(log), services.settings.operator_groups)
    window_s = dashboard_data.window_from_query(_query())
    return json_response(services.dashboard.summary(window_s))
