"""OpenAI wire models (requests validated here; responses come from the engine as dicts)."""

# Registers the Messages API's stream dialect wherever streams are rendered (API, relay, poller).
from chalicelib.protocol import messages_stream  # noqa: F401
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import parse_body
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "parse_body"]
