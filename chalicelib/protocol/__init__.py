"""OpenAI wire models (requests validated here; responses come from the engine as dicts)."""

# Registers the Responses stream dialect (chalicelib.protocol.dialects.get finds it by name).
from chalicelib.protocol import responses_stream as _responses_stream  # noqa: E402, F401
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import parse_body
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "parse_body"]
