"""The vLLM adapter against a replay server that speaks vLLM's recorded HTTP/SSE protocol.

The scenario is the first path segment of ``base_url`` (``http://host/<scenario>/v1``), so one
server serves every case and ``/health`` derives from ``base_url`` exactly as in production.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hpc_functions.engines.base import EngineError, EngineUnavailableError
from hpc_functions.engines.vllm import VllmEngine, health_url_for
from hpc_functions.streaming import Assembler, Coalescer
from tests.servers import serving

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"
SERVED = "meta-llama/Llama-3.1-8B-Instruct"
CHAT_BODY = {"model": SERVED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _events(name: str) -> list[bytes]:
    """An SSE transcript split into its events, each with its blank-line terminator."""
    return [e + b"\n\n" for e in _fixture(name).split(b"\n\n") if e.strip()]


# scenario -> endpoint -> (status, fixture); a .sse fixture is streamed chunk by chunk
JSON_ROUTES: dict[str, tuple[int, str]] = {
    "ok/chat/completions": (200, "chat_completion.json"),
    "ok/completions": (200, "completion.json"),
    "ok/embeddings": (200, "embeddings.json"),
    "bad-request/chat/completions": (400, "error_400.json"),
    "unknown-model/chat/completions": (404, "error_404_legacy.json"),
    "server-error/chat/completions": (500, "error_500.json"),
    "tools/chat/completions": (200, "chat_tool_call.json"),
    "reasoning/chat/completions": (200, "chat_reasoning.json"),
}
STREAM_ROUTES: dict[str, str] = {
    "ok/chat/completions": "chat_stream.sse",
    "ok/completions": "completion_stream.sse",
    "stream-error/chat/completions": "chat_stream_error.sse",
    "stream-error-legacy/chat/completions": "chat_stream_error_legacy.sse",
    "drop/chat/completions": "chat_stream.sse",
    "no-done/chat/completions": "chat_stream.sse",
    "continuous/chat/completions": "chat_stream_continuous.sse",
    "tools/chat/completions": "chat_tool_call_stream.sse",
    "reasoning/chat/completions": "chat_reasoning_stream.sse",
}
# A generation far longer than any test reads: the continuous-usage transcript's content chunk,
# repeated with its usage counting up, until the client hangs up.
LONG_TOKENS = 1_000_000


class ReplayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streaming, as uvicorn serves vLLM
    server: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        scenario, _, rest = self.path.lstrip("/").partition("/")
        if rest != "health":
            self._send(404, b"")
            return
        self._send(503 if scenario == "unhealthy" else 200, b"")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        scenario, _, rest = self.path.lstrip("/").partition("/")
        key = f"{scenario}/{rest.removeprefix('v1/')}"
        if body.get("stream") and scenario == "long":
            self._stream_long()
        elif body.get("stream") and key in STREAM_ROUTES:
            self._stream(scenario, _events(STREAM_ROUTES[key]))
        elif key in JSON_ROUTES:
            status, name = JSON_ROUTES[key]
            self._send(status, _fixture(name), "application/json")
        else:
            self._send(404, b'{"detail":"Not Found"}', "application/json")

    def _send(self, status: int, payload: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, scenario: str, events: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        if scenario == "no-done":
            # Close-delimited body that ends cleanly, but before [DONE].
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"".join(events[:3]))
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if scenario == "drop":
            # The vLLM process dies: two events, then the socket closes mid-body.
            for event in events[:2]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            self.close_connection = True
            return
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _stream_long(self) -> None:
        role, content = (json.loads(e[len(b"data: ") :]) for e in _events(_CONTINUOUS)[:2])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            for n in range(LONG_TOKENS + 1):
                chunk = role if n == 0 else content
                prompt = chunk["usage"]["prompt_tokens"]
                chunk["usage"] = {
                    "prompt_tokens": prompt,
                    "total_tokens": prompt + n,
                    "completion_tokens": n,
                }
                event = b"data: %s\n\n" % json.dumps(chunk, separators=(",", ":")).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                sent += 1
        except ConnectionError:
            # The client closed the response: what makes vLLM abort the generation.
            self.server.aborted_after.append(sent)
            self.server.aborted.set()
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


_CONTINUOUS = "chat_stream_continuous.sse"


class ReplayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReplayHandler)
        self.requests: list[dict[str, Any]] = []
        # Set when a client hangs up on the long generation, with the events written by then.
        self.aborted = threading.Event()
        self.aborted_after: list[int] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The adapter hangs up as soon as it sees an error event, while the replay is still
        # writing [DONE]: a reset or broken pipe here is the client's expected behaviour.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{scenario}/v1"


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with serving(ReplayServer()) as server:
        yield server


def _engine(replay: ReplayServer, scenario: str = "ok", **extra: Any) -> VllmEngine:
    return VllmEngine({"kind": "vllm", "model": SERVED, "base_url": replay.url(scenario), **extra})


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- non-streaming pass-through --------------------------------------------------------------


def test_chat_completion_returns_vllms_response_unchanged(replay: ReplayServer) -> None:
    result = _engine(replay).chat_completions(CHAT_BODY)

    assert result == json.loads(_fixture("chat_completion.json"))


def test_image_parts_reach_vllm_as_openai_multimodal_content(replay: ReplayServer) -> None:
    # The gateway makes every image a data URL (chalicelib/images.py): vLLM's chat parser takes
    # OpenAI's image_url parts as they are, so the adapter passes them through untouched.
    url = "data:image/png;base64,iVBORw0KGgo="
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]
    body = {**CHAT_BODY, "messages": [{"role": "user", "content": content}]}
    replay.requests.clear()

    _engine(replay).chat_completions(body)

    assert replay.requests[-1]["body"]["messages"] == [{"role": "user", "content": content}]


def test_completion_and_embeddings_return_vllms_responses(replay: ReplayServer) -> None:
    engine = _engine(replay)

    completion = engine.completions({"model": SERVED, "prompt": "The capital of France is"})
    embeddings = engine.embeddings({"model": SERVED, "input": ["a", "b"]})

    assert completion == json.loads(_fixture("completion.json"))
    # The client sees the model name it asked for, not the name vLLM happens to serve.
    assert embeddings == {**json.loads(_fixture("embeddings.json")), "model": SERVED}


def test_request_names_the_served_model_and_carries_the_api_key(replay: ReplayServer) -> None:
    engine = _engine(replay, api_key="node-secret")

    result = engine.chat_completions({**CHAT_BODY, "model": "public-alias", "stream": True})

    sent = replay.requests[-1]
    assert sent["body"]["model"] == SERVED
    assert sent["body"]["stream"] is False and "stream_options" not in sent["body"]
    assert sent["auth"] == "Bearer node-secret"
    assert result["model"] == "public-alias"


# -- streaming ---------------------------------------------------------------------------------


def test_stream_yields_every_chunk_in_order_ending_with_usage(replay: ReplayServer) -> None:
    chunks = list(_engine(replay).stream_chat_completions(CHAT_BODY))

    expected = [json.loads(e[len(b"data: ") :]) for e in _events("chat_stream.sse")[:-1]]
    assert chunks == expected
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 41, "total_tokens": 48, "completion_tokens": 7}


def test_stream_asks_vllm_for_usage(replay: ReplayServer) -> None:
    list(_engine(replay).stream_chat_completions({**CHAT_BODY, "stream_options": {}}))

    sent = replay.requests[-1]["body"]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_asks_for_continuous_usage_and_yields_usage_on_every_chunk(
    replay: ReplayServer,
) -> None:
    """What ``run_stream_task`` sends: usage on every chunk, so a stream cut short still counts."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(
        _engine(replay, "continuous").stream_chat_completions(
            {**CHAT_BODY, "stream_options": options}
        )
    )

    assert replay.requests[-1]["body"]["stream_options"] == options
    assert all(isinstance(c.get("usage"), dict) for c in chunks)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 3
    assert chunks[-1]["choices"] == []


def test_cancel_mid_stream_closes_the_response_and_reports_fewer_tokens(
    replay: ReplayServer,
) -> None:
    """The client went away after three tokens: the adapter yields nothing more, hangs up on
    vLLM (which then aborts the request), and the run's usage says three tokens, not the
    max_tokens asked for."""
    cancel = threading.Event()
    assembler = Assembler()
    body = {
        **CHAT_BODY,
        "max_tokens": LONG_TOKENS,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = []
    for chunk in _engine(replay, "long").stream_chat_completions(body, cancel=cancel):
        chunks.append(chunk)
        assembler.add(chunk)
        if assembler.token_chunks == 3:
            cancel.set()

    assert len(chunks) == 4  # the role chunk, then three tokens; nothing after the cancel
    assert replay.aborted.wait(30), "the adapter never closed vLLM's response"
    assert replay.aborted_after[-1] < LONG_TOKENS
    usage = assembler.response("chat_completions")["usage"]
    assert usage["completion_tokens"] == 3 < body["max_tokens"]


def test_completion_stream_yields_chunks_and_usage(replay: ReplayServer) -> None:
    chunks = list(_engine(replay).stream_completions({"model": SERVED, "prompt": "Capital:"}))

    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == " Paris."
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("scenario", ["stream-error", "stream-error-legacy"])
def test_error_object_mid_stream_raises_engine_error(replay: ReplayServer, scenario: str) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(EngineError) as info:
        for chunk in _engine(replay, scenario).stream_chat_completions(CHAT_BODY):
            received.append(chunk)

    assert type(info.value) is EngineError
    assert info.value.message == "Error in extracting tool call from response."
    assert info.value.code == "400"
    assert received and received[0]["choices"][0]["delta"]["role"] == "assistant"


def test_connection_dropped_mid_stream_raises_unavailable(replay: ReplayServer) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(EngineUnavailableError):
        for chunk in _engine(replay, "drop").stream_chat_completions(CHAT_BODY):
            received.append(chunk)

    assert len(received) == 2


def test_stream_closed_cleanly_before_done_raises_unavailable(replay: ReplayServer) -> None:
    with pytest.raises(EngineUnavailableError):
        list(_engine(replay, "no-done").stream_chat_completions(CHAT_BODY))


def test_http_error_before_stream_starts_raises_engine_error(replay: ReplayServer) -> None:
    with pytest.raises(EngineError) as info:
        list(_engine(replay, "bad-request").stream_chat_completions(CHAT_BODY))

    assert info.value.param == "max_tokens"


# -- HTTP error mapping ------------------------------------------------------------------------


def test_http_400_becomes_engine_error_with_param_and_code(replay: ReplayServer) -> None:
    with pytest.raises(EngineError) as info:
        _engine(replay, "bad-request").chat_completions(CHAT_BODY)

    error = info.value
    assert type(error) is EngineError and error.status_code == 400
    assert error.message.startswith("This model's maximum context length is 8192 tokens.")
    assert (error.param, error.code) == ("max_tokens", "400")


def test_legacy_flat_404_becomes_engine_error(replay: ReplayServer) -> None:
    with pytest.raises(EngineError) as info:
        _engine(replay, "unknown-model").chat_completions(CHAT_BODY)

    assert type(info.value) is EngineError
    assert info.value.message == "The model `gpt-4o` does not exist."
    assert (info.value.param, info.value.code) == ("model", "404")


def test_http_500_becomes_engine_unavailable(replay: ReplayServer) -> None:
    with pytest.raises(EngineUnavailableError) as info:
        _engine(replay, "server-error").chat_completions(CHAT_BODY)

    assert info.value.status_code == 503
    assert "EngineCore" in info.value.message


def test_connection_refused_becomes_engine_unavailable() -> None:
    engine = VllmEngine({"kind": "vllm", "model": SERVED, "base_url": _refused_url()})

    with pytest.raises(EngineUnavailableError):
        engine.chat_completions(CHAT_BODY)
    with pytest.raises(EngineUnavailableError):
        list(engine.stream_chat_completions(CHAT_BODY))


# -- readiness ---------------------------------------------------------------------------------


def test_health_url_is_the_server_root_not_the_api_prefix() -> None:
    assert health_url_for("http://127.0.0.1:8001/v1") == "http://127.0.0.1:8001/health"
    assert health_url_for("http://node:8001/vllm/v1/") == "http://node:8001/vllm/health"


def test_ready_follows_health_status(replay: ReplayServer) -> None:
    assert _engine(replay).ready() is True
    assert _engine(replay, "unhealthy").ready() is False
    assert _engine(replay).wait_ready(1.0) is True


def test_not_ready_when_nothing_listens() -> None:
    engine = VllmEngine({"kind": "vllm", "model": SERVED, "base_url": _refused_url()})

    assert engine.ready() is False
    assert engine.wait_ready(0.05, interval=0.01) is False


# -- tools, structured outputs, reasoning: vLLM's parsers do it, the adapter passes through ------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
        "strict": True,
    },
}
TOOLS_BODY = {
    **CHAT_BODY,
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
}
REASONER = "Qwen/Qwen3-8B"


def _tool_engine(replay: ReplayServer) -> VllmEngine:
    return _engine(replay, "tools", tool_call_parser="llama3_json")


def test_tool_call_answer_comes_back_unchanged_and_the_tool_fields_reach_vllm(
    replay: ReplayServer,
) -> None:
    result = _tool_engine(replay).chat_completions(TOOLS_BODY)

    sent = replay.requests[-1]["body"]
    assert {k: sent[k] for k in ("tools", "tool_choice", "parallel_tool_calls")} == {
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    }
    assert result == json.loads(_fixture("chat_tool_call.json"))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}


def test_streamed_tool_call_chunks_come_back_unchanged_and_assemble_into_the_call(
    replay: ReplayServer,
) -> None:
    chunks = list(_tool_engine(replay).stream_chat_completions(TOOLS_BODY))

    expected = [json.loads(e[len(b"data: ") :]) for e in _events("chat_tool_call_stream.sse")[:-1]]
    assert chunks == expected
    assert replay.requests[-1]["body"]["tools"] == [WEATHER_TOOL]
    # What the gateway stores for a streamed request: the call, its arguments joined.
    assembler = Assembler()
    for chunk in chunks:
        assembler.add(chunk)
    choice = assembler.response("chat_completions")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "chatcmpl-tool-5d4c3b2a19f84e7d9c6b5a4f3e2d1c0b",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"city": "Paris", "unit": "celsius"}',
            },
        }
    ]


def test_response_format_reaches_vllm_as_sent(replay: ReplayServer) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "strict": True,
        },
    }

    _engine(replay).chat_completions({**CHAT_BODY, "response_format": response_format})

    assert replay.requests[-1]["body"]["response_format"] == response_format


def test_reasoning_answer_keeps_reasoning_content(replay: ReplayServer) -> None:
    engine = VllmEngine(
        {
            "kind": "vllm",
            "model": REASONER,
            "base_url": replay.url("reasoning"),
            "reasoning_parser": "qwen3",
        }
    )

    result = engine.chat_completions({**CHAT_BODY, "model": REASONER})

    assert result == json.loads(_fixture("chat_reasoning.json"))
    message = result["choices"][0]["message"]
    assert message["reasoning_content"].startswith("\nThe user asks for 2 + 2.")
    assert message["content"] == "\n\n2 + 2 = 4."


def test_streamed_reasoning_chunks_come_back_unchanged(replay: ReplayServer) -> None:
    engine = VllmEngine({"kind": "vllm", "model": REASONER, "base_url": replay.url("reasoning")})

    chunks = list(engine.stream_chat_completions({**CHAT_BODY, "model": REASONER}))

    expected = [json.loads(e[len(b"data: ") :]) for e in _events("chat_reasoning_stream.sse")[:-1]]
    assert chunks == expected
    thought = "\nThe user asks for 2 + 2. It is four.\n"
    pieces = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c["choices"]]
    assert "".join(p for p in pieces if p) == thought
    # Coalesced for the relay, every piece of the thinking survives, beside the content.
    coalescer = Coalescer(flush_tokens=1000, flush_s=1000.0)
    for chunk in chunks:
        coalescer.add(chunk)
    (merged,) = coalescer.take(0.0)
    delta = merged["choices"][0]["delta"]
    assert (delta["reasoning_content"], delta["content"]) == (thought, "\n\n2 + 2 = 4.")
    # And stored as vLLM answers unstreamed: reasoning_content beside content.
    assembler = Assembler()
    for chunk in chunks:
        assembler.add(chunk)
    message = assembler.response("chat_completions")["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (thought, "\n\n2 + 2 = 4.")


@pytest.mark.parametrize("stream", [False, True])
def test_tools_without_a_tool_call_parser_are_a_400_naming_tools_and_never_reach_vllm(
    replay: ReplayServer, stream: bool
) -> None:
    engine = _engine(replay, "tools")
    sent_before = len(replay.requests)

    with pytest.raises(EngineError) as info:
        if stream:
            list(engine.stream_chat_completions(TOOLS_BODY))
        else:
            engine.chat_completions(TOOLS_BODY)

    assert not isinstance(info.value, EngineUnavailableError)
    assert info.value.param == "tools" and "tool_call_parser" in info.value.message
    assert len(replay.requests) == sent_before


# -- through the node entry point --------------------------------------------------------------


def test_run_task_serves_a_chat_request_through_vllm(replay: ReplayServer) -> None:
    engines = pytest.importorskip("hpc_functions.engines")
    if not hasattr(engines, "run_task"):
        pytest.skip("hpc_functions.engines.run_task is not written yet")
    engine_config = {"kind": "vllm", "model": SERVED, "base_url": replay.url("ok")}

    result = engines.run_task(
        "chat_completions", {"request_id": "r1", "engine": engine_config, "body": CHAT_BODY}
    )
    refused = engines.run_task(
        "chat_completions",
        {
            "request_id": "r2",
            "engine": {**engine_config, "base_url": replay.url("bad-request")},
            "body": CHAT_BODY,
        },
    )

    assert result["response"] == json.loads(_fixture("chat_completion.json"))
    assert result["engine_time_ms"] >= 0
    assert refused["status_code"] == 400
    assert refused["error"]["param"] == "max_tokens"
