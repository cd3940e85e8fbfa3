"""The batch line checker: each kind of bad line named with its line number; what a good line
becomes; what is remembered across lines (pure, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.errors import BadRequestError
from chalicelib.protocol.batches import MAX_LISTED_ERRORS, LineChecker
from chalicelib.protocol.common import GatewayRequest

CHAT = "/v1/chat/completions"
MODEL = "m"


def line(custom_id: Any = "a", url: Any = CHAT, **body: Any) -> bytes:
    content = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    row: dict[str, Any] = {"method": "POST", "url": url, "body": content}
    if custom_id is not None:
        row["custom_id"] = custom_id
    return json.dumps(row).encode()


def checker(route: str = CHAT, **kw: Any) -> LineChecker:
    return LineChecker(route=route, may_use=lambda model: model == MODEL, **kw)


def check_all(c: LineChecker, *lines: bytes) -> list[dict[str, Any]]:
    for raw in lines:
        c.check(raw)
    return c.finish()


def test_a_good_line_becomes_its_custom_id_and_engine_body() -> None:
    c = checker()
    out = c.check(line("x-1", temperature=0, top_k=3, stream=False))
    assert out is not None
    assert out["custom_id"] == "x-1"
    assert out["body"]["model"] == MODEL and out["body"]["top_k"] == 3
    assert "stream" not in out["body"]
    assert c.finish() == [] and c.model == MODEL and c.requests == 1


def test_blank_lines_are_skipped_but_counted_for_line_numbers() -> None:
    c = checker()
    errors = check_all(c, line("a"), b"", b"   ", b"{broken")
    assert c.requests == 2
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_json_line", 4)]


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (line(custom_id=None), "missing_custom_id", "custom_id"),
        (line(custom_id=""), "missing_custom_id", "custom_id"),
        (line(custom_id=7), "missing_custom_id", "custom_id"),
        (line("a"), "duplicate_custom_id", "custom_id"),
        (line("b", url="/v1/embeddings"), "mismatched_endpoint", "url"),
        (line("b", model="other"), "mismatched_model", "body.model"),
        (line("b", model=""), "missing_model", "body.model"),
        (line("b", stream=True), "invalid_body", "body.stream"),
        (line("b", temperature=9), "invalid_body", "body.temperature"),
        (
            json.dumps({"custom_id": "b", "method": "GET", "url": CHAT, "body": {}}).encode(),
            "invalid_method",
            "method",
        ),
        (
            json.dumps({"custom_id": "b", "method": "POST", "url": CHAT, "body": "x"}).encode(),
            "invalid_body",
            "body",
        ),
    ],
)
def test_each_bad_line_is_named_with_its_line_number(
    raw: bytes, code: str, param: str | None
) -> None:
    # Line 1 is good (it fixes the model and takes custom_id "a"); line 2 is the bad one.
    errors = check_all(checker(), line("a"), raw)
    assert errors == [{"code": code, "line": 2, "message": errors[0]["message"], "param": param}]


def test_a_model_the_caller_may_not_use_fails_on_its_line() -> None:
    errors = check_all(checker(), b"", line("a", model="secret"))
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [
        ("model_not_found", 2, "body.model")
    ]


def test_the_drop_folder_takes_the_endpoint_from_the_first_line() -> None:
    c = checker(route="")
    errors = check_all(c, line("a"), line("b", url="/v1/completions"))
    assert c.route == CHAT
    assert [(e["code"], e["line"]) for e in errors] == [("mismatched_endpoint", 2)]


def test_a_request_over_the_models_ceiling_is_invalid_body_with_its_param() -> None:
    def ceiling(req: GatewayRequest) -> None:
        raise BadRequestError("max_tokens is too large.", param="max_tokens")

    errors = check_all(checker(ceiling=ceiling), line("a", max_tokens=5))
    assert [(e["code"], e["param"]) for e in errors] == [("invalid_body", "body.max_tokens")]


def test_more_requests_than_the_limit_fail_once_at_the_first_extra_line() -> None:
    errors = check_all(checker(max_requests=2), *(line(f"r{i}") for i in range(4)))
    assert [(e["code"], e["line"]) for e in errors] == [("too_many_requests", 3)]


def test_an_empty_file_fails() -> None:
    assert [e["code"] for e in check_all(checker(), b"", b"\n")] == ["empty_file"]


def test_errors_listed_are_capped_and_all_are_counted() -> None:
    c = checker()
    errors = check_all(c, *(b"{bad" for _ in range(MAX_LISTED_ERRORS + 5)))
    assert len(errors) == MAX_LISTED_ERRORS
    assert c.error_count == MAX_LISTED_ERRORS + 5
    # The caller learns how many were left out: the last listed error says so.
    assert errors[-1]["message"].endswith("(5 more errors are not listed.)")
    assert errors[-1]["line"] == MAX_LISTED_ERRORS
    assert not errors[-2]["message"].endswith("not listed.)")


def test_a_file_with_all_its_errors_listed_mentions_no_others() -> None:
    errors = check_all(checker(), *(b"{bad" for _ in range(MAX_LISTED_ERRORS)))
    assert len(errors) == MAX_LISTED_ERRORS
    assert not any("not listed" in e["message"] for e in errors)


def test_embeddings_lines_are_checked_against_the_embeddings_request() -> None:
    row = {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": MODEL, "input": "hi"}}
    c = checker(route="/v1/embeddings")
    out = c.check(json.dumps(row).encode())
    assert out is not None and out["body"]["input"] == "hi"
    bad = {**row, "custom_id": "f", "body": {"model": MODEL}}
    assert c.check(json.dumps(bad).encode()) is None
    assert c.finish()[0]["param"] == "body.input"


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}


def test_lines_with_tools_and_a_response_format_reach_the_engine_as_sent() -> None:
    c = checker()
    out = c.check(line("t", tools=TOOLS, tool_choice="required", response_format=JSON_SCHEMA))
    assert out is not None
    assert out["body"]["tools"] == TOOLS and out["body"]["tool_choice"] == "required"
    assert out["body"]["response_format"] == JSON_SCHEMA
    assert c.finish() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": {"type": "array"}},
                }
            },
            "body.response_format",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "body.tool_choice",
        ),
        ({"tools": [{"type": "file_search"}]}, "body.tools"),
    ],
)
def test_a_line_whose_tools_or_format_no_engine_can_enforce_is_a_line_error(
    body: dict[str, Any], param: str
) -> None:
    errors = check_all(checker(), line("a"), line("b", **body))
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [("invalid_body", 2, param)]


def test_a_responses_line_runs_as_chat_and_keeps_its_response_skeleton() -> None:
    c = checker("/v1/responses")
    raw = json.dumps(
        {
            "custom_id": "r-1",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": MODEL,
                "instructions": "Be brief.",
                "input": "hi",
                "max_output_tokens": 3,
            },
        }
    ).encode()
    out = c.check(raw)
    assert out is not None and c.finish() == []
    assert out["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert out["body"]["max_tokens"] == 3
    base = out["render"]
    assert base["object"] == "response" and base["id"].startswith("resp_")
    assert (base["instructions"], base["store"]) == ("Be brief.", False)


def test_a_messages_line_runs_as_chat_and_keeps_its_model_and_stops() -> None:
    c = checker("/v1/messages")
    body = {"model": MODEL, "max_tokens": 4, "system": "S", "stop_sequences": ["END"]}
    raw = json.dumps(
        {
            "custom_id": "m-1",
            "url": "/v1/messages",
            "body": {**body, "messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()
    out = c.check(raw)
    assert out is not None and c.finish() == []
    assert out["body"]["messages"][0] == {"role": "system", "content": "S"}
    assert (out["body"]["max_tokens"], out["body"]["stop"]) == (4, ["END"])
    assert out["render"] == {"model": MODEL, "stop_sequences": ["END"]}


@pytest.mark.parametrize(
    ("url", "body", "param"),
    [
        (
            "/v1/responses",
            {"input": "hi", "previous_response_id": "resp_1"},
            "body.previous_response_id",
        ),
        ("/v1/responses", {"input": "hi", "background": True}, "body.background"),
        ("/v1/responses", {"input": "hi", "tools": [{"type": "web_search"}]}, "body.tools[0].type"),
        ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}, "body.max_tokens"),
    ],
)
def test_a_dialect_line_its_translator_refuses_names_the_field(
    url: str, body: dict[str, Any], param: str
) -> None:
    c = checker(url)
    raw = json.dumps({"custom_id": "a", "url": url, "body": {"model": MODEL, **body}}).encode()
    (error,) = check_all(c, raw)
    assert (error["code"], error["param"], error["line"]) == ("invalid_body", param, 1)
