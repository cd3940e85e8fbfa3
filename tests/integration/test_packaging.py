"""The app packages for Lambda without any AWS endpoint, into a template cfn-lint accepts, with
API Gateway's own errors (unknown route, throttling, body too large …) OpenAI-shaped, and the
WebSocket API for streaming beside the REST API, its management URL given to what posts frames."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from chalicelib.settings import REPO_ROOT

BIN = Path(sys.executable).parent
GATEWAY_RESPONSES = REPO_ROOT / "infra" / "api-gateway-responses.json"
# What API Gateway puts in place of its $context variables (a JSON string, a word).
CONTEXT = {"$context.error.messageString": '"Forbidden"'}


def test_chalice_package_emits_a_valid_sam_template(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    subprocess.run(
        [
            str(BIN / "chalice"),
            "package",
            "--stage",
            "prod",
            "--merge-template",
            str(GATEWAY_RESPONSES),
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    sam = json.loads((tmp_path / "sam.json").read_text())
    with zipfile.ZipFile(tmp_path / "deployment.zip") as z:
        names = z.namelist()
    ours = {
        n.split("/")[0] for n in names if n.startswith(("chalicelib/", "offline/", "first_cli/"))
    }
    # The Lambda holds what runs in AWS: never the offline stack, its moto server or the CLIs.
    assert ours == {"chalicelib"}
    assert not [n for n in names if n.startswith(("moto/", "chalicelib/local/"))]
    assert not [n for n in names if n.startswith("chalicelib/") and n.endswith("cli.py")]
    assert any(r["Type"] == "AWS::Serverless::Function" for r in sam["Resources"].values())
    definition = sam["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    # Chalice's own swagger survives the merge, next to the gateway responses.
    assert "/v1/chat/completions" in definition["paths"]
    assert_gateway_responses_are_openai_errors(definition["x-amazon-apigateway-gateway-responses"])
    assert_websocket_api_streams(sam)
    assert_reply_queues_are_swept_hourly(sam)
    lint = subprocess.run(
        [
            str(BIN / "cfn-lint"),
            str(tmp_path / "sam.json"),
            str(REPO_ROOT / "infra" / "resources.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


def assert_gateway_responses_are_openai_errors(responses: dict[str, Any]) -> None:
    # In the swagger (not separate GatewayResponse resources), so they are part of the API's
    # deployment: a GatewayResponse changed outside it takes effect only on the next deploy.
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN"} <= set(responses)
    assert {"UNSUPPORTED_MEDIA_TYPE", "REQUEST_TOO_LARGE", "THROTTLED"} <= set(responses)
    errors: dict[str, dict[str, Any]] = {}
    for kind, response in responses.items():
        template = response["responseTemplates"]["application/json"]
        for variable, value in CONTEXT.items():
            template = template.replace(variable, value)
        errors[kind] = json.loads(template)["error"]
        assert set(errors[kind]) == {"message", "type", "param", "code"}, kind
        assert isinstance(errors[kind]["message"], str) and errors[kind]["message"], kind
        assert errors[kind]["code"] is None or isinstance(errors[kind]["code"], str), kind
    # A route API Gateway does not know answers 403 "Missing Authentication Token" by default.
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["statusCode"] == "404"
    assert errors["MISSING_AUTHENTICATION_TOKEN"]["code"] == "unknown_url"


def assert_websocket_api_streams(sam: dict[str, Any]) -> None:
    """The WebSocket API (Chalice's ``WEBSOCKETS`` feature) with its three routes, each on its own
    handler, and the management endpoint of that API's stage in the environment of the functions
    that post frames (the relay in the REST handler, refusals in ``$default``)."""
    resources = sam["Resources"]
    (api,) = [k for k, r in resources.items() if r["Type"] == "AWS::ApiGatewayV2::Api"]
    assert resources[api]["Properties"]["ProtocolType"] == "WEBSOCKET"
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]["Target"]
        for r in resources.values()
        if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    assert set(routes) == {"$connect", "$default", "$disconnect"}
    handlers = {
        f["Properties"]["Handler"]
        for f in resources.values()
        if f["Type"] == "AWS::Serverless::Function"
    }
    assert {"app.ws_connect", "app.ws_message", "app.ws_disconnect"} <= handlers
    (stage,) = [r for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Stage"]
    expected = (
        f"https://${{{api}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/"
        f"{stage['Properties']['StageName']}"
    )
    for function in ("APIHandler", "WebsocketMessage"):
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        assert variables["FIRST_WEBSOCKET_MANAGEMENT_URL"] == {"Fn::Sub": expected}, function
    # For the poller's environment, which is deployed outside this template.
    assert sam["Outputs"]["WebsocketManagementURL"]["Value"] == {"Fn::Sub": expected}


def assert_reply_queues_are_swept_hourly(sam: dict[str, Any]) -> None:
    """``@app.schedule`` becomes its own function on an EventBridge schedule, with its own role
    holding only the sweeper's policy (``lambda_functions`` in ``.chalice/config.json``)."""
    function = sam["Resources"]["SweepReplyQueues"]["Properties"]
    assert function["Handler"] == "app.sweep_reply_queues"
    (event,) = function["Events"].values()
    assert event == {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)"}}
    role = function["Role"]["Fn::GetAtt"][0]
    (policy,) = sam["Resources"][role]["Properties"]["Policies"]
    expected = json.loads((REPO_ROOT / ".chalice" / "policy-prod-sweeper.json").read_text())
    assert policy["PolicyDocument"] == expected
