"""What Chalice answers itself (wrong method, wrong Content-Type, an error outside our views)
reaches the client as an OpenAI error, in Lambda as locally: the app's middleware rewrites it."""

from __future__ import annotations

import json
from typing import Any

from chalice import Chalice
from chalice.config import Config
from chalice.local import LocalGateway

from app import app
from chalicelib.http import ThreadSafeChalice, openai_errors


def call(chalice_app: Chalice, method: str, path: str, **headers: str) -> dict[str, Any]:
    gateway = LocalGateway(chalice_app, Config.create(chalice_app=chalice_app, app_name="t"))
    body = b"{}" if method == "POST" else None
    return gateway.handle_request(method=method, path=path, headers=headers, body=body)


def error_of(response: dict[str, Any]) -> dict[str, Any]:
    assert response["headers"]["Content-Type"] == "application/json"
    error: dict[str, Any] = json.loads(response["body"])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_method_the_route_lacks_is_an_openai_405_naming_the_allowed_ones() -> None:
    response = call(app, "GET", "/v1/chat/completions")
    assert response["statusCode"] == 405
    assert response["headers"]["Allow"] == "POST"
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert error["type"] == "invalid_request_error"
    assert "GET" in error["message"]


def test_a_content_type_the_route_does_not_take_is_an_openai_415() -> None:
    response = call(app, "POST", "/v1/chat/completions", **{"Content-Type": "application/xml"})
    assert response["statusCode"] == 415
    error = error_of(response)
    assert error["code"] == "unsupported_media_type"
    assert "application/xml" in error["message"]


def test_an_error_outside_our_views_is_an_openai_500_without_internals() -> None:
    bare = ThreadSafeChalice(app_name="t")
    bare.register_middleware(openai_errors, "http")

    @bare.route("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = call(bare, "GET", "/boom")
    assert response["statusCode"] == 500
    error = error_of(response)
    assert error["type"] == "server_error" and error["code"] is None
    assert "secret" not in error["message"]


def test_the_apps_own_responses_pass_through_unchanged() -> None:
    response = call(app, "GET", "/health")
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"status": "ok"}


def test_get_on_a_model_id_ending_in_warm_is_the_retrieve_route_not_a_405() -> None:
    # `/v1/models/acme/warm` is also the warm-up route's path (POST): a GET there retrieves
    # the model `acme/warm` like any slashed id, so it asks for a key as retrieval does.
    warm, other = (call(app, "GET", f"/v1/models/acme/{name}") for name in ("warm", "other"))
    assert warm["statusCode"] == other["statusCode"] == 401
    assert error_of(warm)["code"] == error_of(other)["code"] == "invalid_api_key"
    assert call(app, "PUT", "/v1/models/acme/warm")["statusCode"] == 405
