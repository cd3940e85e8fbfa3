"""The production engine: a node-local ``vllm serve`` reached over its OpenAI HTTP protocol.

vLLM runs as its own process on the GPU node (started by ``hpc_functions.launcher``); this
adapter only speaks HTTP to it, so a worker never loads a model or imports torch. Errors are
translated where they enter::

    vLLM 4xx body ({"error": {...}} or the older flat {"object": "error", ...})
                                        -> EngineError (message, param, code kept; code a str)
    401 / 408 / 429 / 5xx, connection refused, timeout, stream cut before [DONE]
                                        -> EngineUnavailableError (503)
    an error object inside the SSE stream -> EngineError, or EngineUnavailableError if 5xx

Tools, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` pass through to vLLM, and
its answer comes back unchanged (``message.tool_calls``, ``finish_reason: "tool_calls"``,
``reasoning_content``; streamed ``delta.tool_calls`` / ``delta.reasoning_content``): vLLM's tool
and reasoning parsers do the work. Tools need the parser the deployment's registry entry names
(``tool_call_parser``, which the launcher passes to ``vllm serve``): without one, a request with
tools is refused here with a 400 naming ``tools``, rather than answered as plain text.

Prompt and completion text never reach the log: only paths, statuses and timings do.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from hpc_functions.engines.base import EngineError, EngineUnavailableError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
# A node-local server accepts a connection at once or not at all: fail fast on refusal.
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
_DONE = "[DONE]"
# Statuses where the request itself is fine and the server is the problem. 401 means our
# configured api_key does not match the server's: the client cannot fix that either.
_UNAVAILABLE_4XX = frozenset({401, 408, 429})


def health_url_for(base_url: str) -> str:
    """vLLM serves ``/health`` at the server root, beside (not under) the ``/v1`` API prefix."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/health", "", ""))


def _code(value: Any) -> str | None:
    # vLLM sends the HTTP status as an int code; openai-python expects a string or null.
    return None if value is None else str(value)


def _error_fields(body: Any) -> dict[str, Any] | None:
    """The error object in either vLLM shape, or None if ``body`` is not an error."""
    if not isinstance(body, dict):
        return None
    nested = body.get("error")
    if isinstance(nested, dict):
        return nested
    if isinstance(nested, str):  # vLLM's api-key middleware: {"error": "Unauthorized"}
        return {"message": nested}
    if body.get("object") == "error":
        return body
    return None


def _is_server_side(fields: dict[str, Any], status: int | None) -> bool:
    code = fields.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    effective = status if status is not None else code
    return isinstance(effective, int) and (effective >= 500 or effective in _UNAVAILABLE_4XX)


def _to_engine_error(fields: dict[str, Any], status: int | None) -> EngineError:
    message = str(fields.get("message") or "vLLM returned an error without a message")
    if _is_server_side(fields, status):
        return EngineUnavailableError(message, code=_code(fields.get("code")))
    param = fields.get("param")
    return EngineError(
        message, param=None if param is None else str(param), code=_code(fields.get("code"))
    )


def _error_from_response(resp: requests.Response) -> EngineError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    fields = _error_fields(body) or {"message": f"vLLM returned HTTP {resp.status_code}"}
    return _to_engine_error(fields, resp.status_code)


class VllmEngine:
    """One model served by a node-local vLLM OpenAI server.

    ``config``: ``{"kind": "vllm", "model": served name, "base_url": "http://127.0.0.1:8001/v1"}``
    plus optional ``api_key``, ``timeout_s`` (per read; default 600), ``health_url``, and the
    parsers its ``vllm serve`` was started with: ``tool_call_parser``, ``reasoning_parser``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import requests

        try:
            self.model = str(config["model"])
            self.base_url = str(config["base_url"]).rstrip("/")
        except KeyError as exc:
            raise EngineUnavailableError(
                f"vllm engine config is missing {exc.args[0]!r}", param="engine"
            ) from exc
        self.timeout_s = float(config.get("timeout_s") or DEFAULT_TIMEOUT_S)
        self.health_url = str(config.get("health_url") or health_url_for(self.base_url))
        self.tool_call_parser = config.get("tool_call_parser") or None
        self._session = requests.Session()
        api_key = config.get("api_key")
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    # -- non-streaming -------------------------------------------------------------------

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_tools(body)
        return self._call("/chat/completions", body)

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("/completions", body)

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("/embeddings", body)

    # -- streaming -----------------------------------------------------------------------

    def stream_chat_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield vLLM's chunks in order, ending with the usage chunk (``choices: []``).

        Once ``cancel`` is set the stream ends early: closing the response makes vLLM abort
        the request and free its GPU slot."""
        self._check_tools(body)
        return self._stream("/chat/completions", body, cancel)

    def stream_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        return self._stream("/completions", body, cancel)

    # -- readiness -----------------------------------------------------------------------

    def ready(self) -> bool:
        """True when vLLM answers 200 on /health (its engine loop is alive)."""
        import requests

        try:
            resp = self._session.get(self.health_url, timeout=HEALTH_TIMEOUT_S)
        except requests.RequestException:
            return False
        with resp:
            return resp.status_code == 200

    def wait_ready(self, timeout: float, *, interval: float = 1.0) -> bool:
        """Poll /health until ready or ``timeout`` seconds pass; returns whether it is ready."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ready():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(interval, remaining))

    def close(self) -> None:
        self._session.close()

    # -- internals -----------------------------------------------------------------------

    def _check_tools(self, body: dict[str, Any]) -> None:
        # Without a tool parser vLLM refuses tool_choice "auto" with a message about its own
        # command line, and answers "required" or a named tool by guided decoding: one model
        # that calls tools for some requests only. The registry lists it without tools; say so.
        if body.get("tools") and not self.tool_call_parser:
            raise EngineError(
                f"The model '{body.get('model') or self.model}' does not support tools: its "
                "deployment names no tool_call_parser.",
                param="tools",
                code="tools_not_supported",
            )

    def _request_body(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        out = dict(body)
        # vLLM answers 404 for any name but its --served-model-name.
        out["model"] = self.model
        if stream:
            out["stream"] = True
            options = dict(out.get("stream_options") or {})
            options["include_usage"] = True
            out["stream_options"] = options
        else:
            out["stream"] = False
            # vLLM rejects stream_options unless stream is true.
            out.pop("stream_options", None)
        return out

    def _post(self, path: str, payload: dict[str, Any], *, stream: bool) -> requests.Response:
        import requests

        url = f"{self.base_url}{path}"
        try:
            resp = self._session.post(
                url, json=payload, stream=stream, timeout=(CONNECT_TIMEOUT_S, self.timeout_s)
            )
        except requests.ConnectionError as exc:
            log.warning("vllm %s unreachable: %s", path, type(exc).__name__)
            raise EngineUnavailableError(f"vLLM at {self.base_url} is unreachable") from exc
        except requests.Timeout as exc:
            log.warning("vllm %s timed out after %.0f s", path, self.timeout_s)
            raise EngineUnavailableError(
                f"vLLM did not answer within {self.timeout_s:.0f} s"
            ) from exc
        except requests.RequestException as exc:
            raise EngineUnavailableError(f"vLLM request failed: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            with resp:
                error = _error_from_response(resp)
            log.info("vllm %s -> HTTP %d", path, resp.status_code)
            raise error
        return resp

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        requested = body.get("model")
        resp = self._post(path, self._request_body(body, stream=False), stream=False)
        with resp:
            try:
                result = resp.json()
            except ValueError as exc:
                raise EngineUnavailableError("vLLM returned a body that is not JSON") from exc
        if not isinstance(result, dict):
            raise EngineUnavailableError("vLLM returned JSON that is not an object")
        fields = _error_fields(result)
        if fields is not None:  # a 200 carrying an error object: treat it as the error
            raise _to_engine_error(fields, None)
        _restore_model(result, requested)
        log.info("vllm %s -> 200 in %.1f ms", path, (time.perf_counter() - started) * 1000)
        return result

    def _stream(
        self, path: str, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        import requests

        started = time.perf_counter()
        requested = body.get("model")
        resp = self._post(path, self._request_body(body, stream=True), stream=True)
        chunks = 0
        with resp:
            try:
                for data in _sse_data(resp):
                    if data == _DONE:
                        log.info(
                            "vllm %s stream: %d chunks in %.1f ms",
                            path,
                            chunks,
                            (time.perf_counter() - started) * 1000,
                        )
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise EngineUnavailableError(
                            "vLLM sent an SSE event that is not JSON"
                        ) from exc
                    fields = _error_fields(chunk)
                    if fields is not None:
                        log.info("vllm %s stream: error after %d chunks", path, chunks)
                        raise _to_engine_error(fields, None)
                    _restore_model(chunk, requested)
                    chunks += 1
                    yield chunk
                    if cancel is not None and cancel.is_set():
                        log.info("vllm %s stream: cancelled after %d chunks", path, chunks)
                        return
            except requests.RequestException as exc:
                # urllib3 raises ProtocolError (wrapped as ChunkedEncodingError) when the
                # server process dies mid-response; a read timeout lands here too.
                log.warning("vllm %s stream broken after %d chunks", path, chunks)
                raise EngineUnavailableError("vLLM stream ended before [DONE]") from exc
        log.warning("vllm %s stream closed after %d chunks without [DONE]", path, chunks)
        raise EngineUnavailableError("vLLM stream ended before [DONE]")


def _restore_model(obj: dict[str, Any], requested: Any) -> None:
    # The client asked for the gateway's model name; vLLM reports its served name.
    if isinstance(requested, str) and requested and "model" in obj:
        obj["model"] = requested


def _sse_data(resp: requests.Response) -> Iterator[str]:
    """The ``data`` payload of each server-sent event, per the SSE framing rules.

    Events end at a blank line; several ``data:`` lines in one event join with newlines;
    comments (``:``) and other fields (``event:``, ``id:``) are ignored.
    """
    buffer = b""
    data_lines: list[str] = []
    # chunk_size=None yields each HTTP chunk as it arrives (vLLM streams chunked); a fixed
    # size would make urllib3 2 wait until that many bytes are buffered.
    for piece in resp.iter_content(chunk_size=None):
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if data_lines:
                    yield "\n".join(data_lines)
                    data_lines = []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                data_lines.append(value[1:] if value.startswith(" ") else value)
    # Per the SSE rules an event cut off before its blank line is discarded: a stream that
    # ends that way is incomplete, and the caller sees no [DONE].
