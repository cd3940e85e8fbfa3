"""OpenAI wire models (requests validated here; responses come from the engine as dicts)."""

from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import parse_body
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "parse_body"]
