"""OpenAI wire models (requests validated here; responses come from the engine as dicts)."""

# Register the Messages and Responses stream dialects (chalicelib.protocol.dialects.get finds
# them by name) wherever streams are rendered: the API, the relay, the poller.
from chalicelib.protocol import messages_stream as _messages_stream  # noqa: F401
from chalicelib.protocol import responses_stream as _responses_stream  # noqa: F401
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import parse_body
from chalicelib.protocol.completions import CompletionRequest
from chalicelib.protocol.embeddings import EmbeddingRequest

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "parse_body"]
