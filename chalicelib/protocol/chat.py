"""``POST /v1/chat/completions`` request model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictStr, model_validator

from chalicelib.errors import BadRequestError
from chalicelib.protocol.bounds import INT32_MAX, MAX_MESSAGES, MAX_TOOLS, MAX_TOP_LOGPROBS
from chalicelib.protocol.common import OpenAIModel, SamplingFields
from chalicelib.protocol.schema_subset import answer_schema, check_tools


class ToolCallFunction(OpenAIModel):
    name: StrictStr = Field(min_length=1)
    # A JSON string, as the model wrote it (OpenAI's shape: not an object).
    arguments: StrictStr


class ToolCall(OpenAIModel):
    id: StrictStr = Field(min_length=1)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _tools_and_format_enforceable(self) -> ChatCompletionRequest:
        # The engines' own checks (schema_subset is theirs, copied): a 400 naming the field
        # here rather than a failed request after the queue, and never a field silently ignored.
        check_tools(self.tools, self.tool_choice, self.parallel_tool_calls)
        answer_schema(self.response_format)
        _check_tool_turns(self.messages)
        return self

    def capabilities_used(self) -> dict[str, str]:
        used: dict[str, str] = {}
        if self.tools and self.tool_choice != "none":
            used["tools"] = "tools"
        if (self.response_format or {}).get("type") in ("json_object", "json_schema"):
            used["structured_outputs"] = "response_format"
        images = self.image_parts()
        if images:
            used["vision"] = images[0][0]
        return used

    def image_parts(self) -> list[tuple[str, dict[str, Any]]]:
        """Every ``image_url`` content part, with the param that names it
        (``messages[0].content[1]``): the gateway checks each and makes it a data URL."""
        return [
            (f"messages[{i}].content[{j}]", part)
            for i, message in enumerate(self.messages)
            if isinstance(message.content, list)
            for j, part in enumerate(message.content)
            if part.get("type") == "image_url"
        ]


def _check_tool_turns(messages: list[ChatMessage]) -> None:
    """Tool calls only from the assistant; each tool result answers a call made before it."""
    called: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.tool_calls:
            if message.role != "assistant":
                raise BadRequestError(
                    f"{where}: only assistant messages may carry tool_calls", param="messages"
                )
            called.update(call.id for call in message.tool_calls)
        if message.role == "tool":
            if message.tool_call_id is None:
                raise BadRequestError(
                    f"{where}: a tool message needs the tool_call_id it answers", param="messages"
                )
            if message.tool_call_id not in called:
                raise BadRequestError(
                    f"{where}: tool_call_id {message.tool_call_id[:64]!r} answers no tool call "
                    "of an earlier assistant message",
                    param="messages",
                )
