"""``GET /openapi.json``: every route of the app, request schemas from the pydantic models,
OpenAI errors, and a document a real validator accepts."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from chalice.config import Config
from chalice.local import LocalGateway
from openapi_spec_validator import OpenAPIV31SpecValidator

from app import app
from chalicelib import openapi
from chalicelib.auth import Principal
from chalicelib.errors import BadRequestError, EngineFailedError, FirstError
from chalicelib.models_view import retrieve_model
from chalicelib.protocol import ChatCompletionRequest
from chalicelib.registry import Registry
from chalicelib.settings import REPO_ROOT

DOC = openapi.build(app)


def served(path: str, **headers: str) -> dict[str, Any]:
    gateway = LocalGateway(app, Config.create(chalice_app=app, app_name="t"))
    return gateway.handle_request(method="GET", path=path, headers=headers, body=None)


def resolver_schema(name: str) -> dict[str, Any]:
    """A component schema, resolvable on its own (components alongside)."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}


def test_every_route_and_method_of_the_app_is_in_the_document() -> None:
    assert openapi.undocumented(app) == []
    served_ops = {(p, m.lower()) for p, methods in app.routes.items() for m in methods}
    documented = {(p, m) for p, ops in DOC["paths"].items() for m in ops}
    assert documented == served_ops


def test_no_entry_describes_a_route_the_app_does_not_serve() -> None:
    routes = {(p, m) for p, methods in app.routes.items() for m in methods}
    assert set(openapi.OPERATIONS) - routes == set()


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(DOC).validate()


def test_request_bodies_are_the_protocol_models_with_defs_as_component_refs() -> None:
    text = json.dumps(DOC)
    assert "$defs" not in text
    body = DOC["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    chat = DOC["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/ChatMessage"}
    assert chat["properties"]["messages"]["maxItems"] == 2048  # bounds.MAX_MESSAGES, from code


def test_a_body_the_model_accepts_the_schema_accepts_and_one_it_refuses_the_schema_refuses() -> (
    None
):
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ChatCompletionRequest.model_validate(good)
    jsonschema.validate(good, resolver_schema("ChatCompletionRequest"))
    bad = {**good, "n": 17}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, resolver_schema("ChatCompletionRequest"))


@pytest.mark.parametrize("exc", [BadRequestError("x", param="n"), EngineFailedError("y")])
def test_every_error_response_is_the_openai_error_object(exc: FirstError) -> None:
    jsonschema.validate(exc.to_body(), resolver_schema("Error"))
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            # The Messages API's routes answer Anthropic's error object instead.
            error = "AnthropicError" if path.startswith("/v1/messages") else "Error"
            for status in ("4XX", "5XX"):
                assert op["responses"][status] == {"$ref": f"#/components/responses/{error}"}, (
                    path,
                    method,
                )


def test_only_health_and_the_document_itself_need_no_key() -> None:
    assert DOC["security"] == [{"bearer": []}]
    open_ops = {
        (p, m) for p, ops in DOC["paths"].items() for m, op in ops.items() if "security" in op
    }
    # The operator page's static shell is public too; its data route needs an operator's key.
    shell = {("/dashboard", "get"), ("/dashboard/{name}", "get")}
    assert open_ops == {("/health", "get"), ("/openapi.json", "get"), *shell}


def test_path_parameters_are_the_route_s_own() -> None:
    op = DOC["paths"]["/v1/models/{model}/{name}"]["get"]
    assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == ["model", "name"]


def test_the_websocket_protocol_is_described_beside_the_http_routes() -> None:
    ws = DOC["x-websocket"]
    from chalicelib.streaming.service import ACTIONS

    assert ws["message"]["properties"]["action"]["enum"] == sorted(ACTIONS)
    assert set(ws["frames"]) == {"chunk", "done", "error"}


def test_get_openapi_json_serves_the_document_without_a_key() -> None:
    response = served("/openapi.json")
    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"] == "application/json"
    assert json.loads(response["body"]) == DOC
    # Built once: the second call serves the same cached text.
    assert openapi.document_text(app) is openapi.document_text(app)


def test_the_models_answer_is_described_with_its_capabilities() -> None:
    registry = Registry.load(REPO_ROOT / "infra" / "deployments" / "local.json", {})
    principal = Principal(id="alice", username="alice")
    one = DOC["paths"]["/v1/models/{model}"]["get"]["responses"]["200"]["content"]
    one = one["application/json"]["schema"]
    listed = DOC["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    listed = listed["application/json"]["schema"]
    model = {**retrieve_model(registry, principal, "first/tiny-chat"), "status": "hot"}

    jsonschema.validate(model, one)
    jsonschema.validate({"object": "list", "data": [model]}, listed)
    without_tools = {**model, "capabilities": {**model["capabilities"]}}
    del without_tools["capabilities"]["tools"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(without_tools, one)
