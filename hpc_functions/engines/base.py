"""The engine protocol every backend implements, and the errors engines raise.

An engine is built once per worker process from its config dict and kept warm (see
``hpc_functions.engines.get_engine``); each call takes an OpenAI request body (a dict already
validated by the gateway) and returns an OpenAI response dict.
"""

from __future__ import annotations

from typing import Any, Protocol


class EngineError(Exception):
    """A request the engine refuses: reaches the client as an OpenAI error with this status."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_result(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            },
            "status_code": self.status_code,
        }


class EngineUnavailableError(EngineError):
    """The engine cannot serve right now (not started, crashed, overloaded)."""

    status_code = 503
    error_type = "server_error"


class Engine(Protocol):
    """One loaded model. Methods return OpenAI-exact response objects as dicts."""

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def completions(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]: ...
