"""``POST /v1/messages`` (Anthropic's Messages API), translated to and from chat completions.

A Messages body becomes one :class:`ChatCompletionRequest` (:meth:`MessagesRequest.to_chat`), so
it takes the one submission path and the engines' tools and constrained decoding as they are;
the chat result comes back as Anthropic's ``message`` (:func:`to_message`). Pure: no I/O.

What maps to what:

- ``system`` (a string or text blocks) → the first ``system`` message;
- a ``system`` turn inside ``messages`` → a ``system`` message where it stands;
- a ``user`` turn's ``tool_result`` blocks → ``tool`` messages (first, in order: they answer the
  assistant turn before), its text blocks → one ``user`` message; ``is_error`` results are
  prefixed ``Error:`` (chat has no such flag);
- an ``assistant`` turn's text → its content, ``tool_use`` blocks → ``tool_calls`` (``input``
  as the JSON ``arguments``); ``thinking`` blocks are not sent back (the engine sees a stateless
  conversation, as chat templates drop earlier reasoning anyway);
- ``tools`` → function tools (``input_schema`` is ``parameters``), ``tool_choice`` ``auto`` /
  ``any`` / ``tool`` / ``none`` → ``auto`` / ``required`` / the named function / ``none``,
  ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
- ``output_config.format`` (a JSON schema) → ``response_format`` ``json_schema``, enforced as
  on chat (constrained decoding on the transformers engine);
- ``stop_sequences`` → ``stop``, ``metadata.user_id`` → ``user``; ``top_k`` passes through (vLLM
  takes it), and so does ``seed`` (chat's, a gateway extra here); other fields Anthropic's
  clients send (``cache_control``, ``service_tier`` …) are accepted and not used; ``thinking`` is accepted, and reasoning the engine writes (``reasoning_content``)
  comes back as a ``thinking`` block.

An ``image`` block (``source`` base64 or url) becomes a chat ``image_url`` part, so the image
rules of chat decide (``chalicelib.images``): a model without ``vision`` in the registry answers
a 400 ``vision_not_supported``, a bad image a 400 naming its part. ``document`` and
``search_result`` blocks are a 400 naming the block: no model here serves them yet.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictStr, field_validator, model_validator

from chalicelib.errors import BadRequestError, EngineFailedError
from chalicelib.protocol.bounds import (
    INT32_MAX,
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
)
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import OpenAIModel, validate

# The Messages API's routes: their clients parse Anthropic's error shape (chalicelib/http.py,
# first proxy).
PATH_PREFIX = "/v1/messages"


def speaks_anthropic(path: str | None) -> bool:
    """Whether errors on ``path`` (a route or resource path) take Anthropic's shape."""
    return bool(path) and (path == PATH_PREFIX or str(path).startswith(PATH_PREFIX + "/"))


class TextBlock(OpenAIModel):
    type: Literal["text"]
    text: StrictStr


class ToolUseBlock(OpenAIModel):
    type: Literal["tool_use"]
    id: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(OpenAIModel):
    type: Literal["tool_result"]
    tool_use_id: StrictStr = Field(min_length=1)
    content: StrictStr | list[dict[str, Any]] | None = None
    is_error: StrictBool | None = None


class ThinkingBlock(OpenAIModel):
    type: Literal["thinking", "redacted_thinking"]


class ImageSource(OpenAIModel):
    type: Literal["base64", "url"]
    media_type: StrictStr | None = None
    data: StrictStr | None = None
    url: StrictStr | None = None


class ImageBlock(OpenAIModel):
    type: Literal["image"]
    source: ImageSource

    def image_url(self, where: str) -> str:
        """The image as chat's ``image_url.url``: a data URL (base64), or the URL as given."""
        source = self.source
        if source.type == "base64":
            if not source.media_type or not source.data:
                raise BadRequestError(
                    f"{where}: a base64 image source needs media_type and data.", param=where
                )
            return f"data:{source.media_type};base64,{source.data}"
        if not source.url:
            raise BadRequestError(f"{where}: a url image source needs its url.", param=where)
        return source.url


class UnservedBlock(OpenAIModel):
    type: Literal["document", "search_result"]


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | UnservedBlock,
    Field(discriminator="type"),
]


class InputMessage(OpenAIModel):
    # "system": a system turn inside the conversation (Claude Code sends its environment so).
    role: Literal["user", "assistant", "system"]
    content: StrictStr | list[Block]


class Tool(OpenAIModel):
    # Client tools only ("custom", or no type): server tools (web search, code execution) run
    # at Anthropic, not here.
    type: Literal["custom"] | None = None
    name: StrictStr = Field(min_length=1)
    description: StrictStr | None = None
    input_schema: dict[str, Any]
    # Without it (Anthropic's default) any JSON Schema is taken; see schema_subset.
    strict: StrictBool | None = None


class ToolChoice(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None

    @model_validator(mode="after")
    def _tool_names_one(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self


class OutputFormat(OpenAIModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(OpenAIModel):
    effort: str | None = None  # accepted; the engines have no such knob
    format: OutputFormat | None = None


class Metadata(OpenAIModel):
    user_id: StrictStr | None = None


class CountTokensRequest(OpenAIModel):
    """``POST /v1/messages/count_tokens``: the conversation of a Messages body, fields in the
    order of Anthropic's API reference (:class:`MessagesRequest` adds the sampling)."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    stop_sequences: list[StrictStr] | None = None
    stream: StrictBool | None = None
    system: StrictStr | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    thinking: dict[str, Any] | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)

    @field_validator("stop_sequences")
    @classmethod
    def _stops_bounded(cls, v: list[str] | None) -> list[str] | None:
        if v and len(v) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if v and any(len(s) > MAX_STOP_CHARS for s in v):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_CHARS} characters")
        return v

    def to_chat(self, max_tokens: int | None = None) -> ChatCompletionRequest:
        """The chat request that asks the engine for this message (a 400 naming the field for
        what chat cannot say); ``max_tokens`` replaces the body's."""
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else _texts(self.system)
            messages.append({"role": "system", "content": system})
        for i, message in enumerate(self.messages):
            messages.extend(_chat_messages(message, f"messages[{i}]"))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if self.stop_sequences:
            body["stop"] = [s for s in self.stop_sequences if s]
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p:
            body["top_p"] = self.top_p
        if self.top_k:
            body["top_k"] = self.top_k
        seed = (self.model_extra or {}).get("seed")
        if seed is not None:
            body["seed"] = seed  # a gateway extra (chat's field): reproducible samples
        if self.metadata is not None and self.metadata.user_id:
            body["user"] = self.metadata.user_id
        if self.output_config is not None and self.output_config.format is not None:
            schema = self.output_config.format.schema_
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": True},
            }
        if self.tools:
            body["tools"] = [_chat_tool(tool) for tool in self.tools]
        if self.tool_choice is not None:
            body.update(_chat_tool_choice(self.tool_choice, bool(self.tools)))
        return validate({k: v for k, v in body.items() if v is not None}, ChatCompletionRequest)


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``: ``max_tokens`` is required."""

    max_tokens: int = Field(ge=1, le=INT32_MAX)


def _texts(blocks: list[TextBlock]) -> str:
    return "\n".join(b.text for b in blocks)


def _unserved(block: Any, where: str) -> BadRequestError:
    return BadRequestError(
        f"{where}: '{block.type}' blocks are not supported by the models served here.",
        param=where,
        code="unsupported_content",
    )


def _chat_messages(message: InputMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    # A user turn with images: its text and image blocks as chat content parts, in order.
    parts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        at = f"{where}.content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            if message.role != "user":
                raise BadRequestError(f"{at}: only user turns may carry images", param=at)
            parts.append({"type": "image_url", "image_url": {"url": block.image_url(at)}})
        elif isinstance(block, UnservedBlock):
            raise _unserved(block, at)
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise BadRequestError(f"{at}: only assistant turns may carry tool_use", param=at)
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": json.dumps(block.input)},
                }
            )
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise BadRequestError(f"{at}: only user turns may carry tool_result", param=at)
            results.append(_tool_message(block, at))
        # thinking / redacted_thinking: not sent back (see the module's docstring).
    if message.role == "assistant":
        if not texts and not calls:
            return []
        turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            turn["tool_calls"] = calls
        return [turn]
    if len(parts) > len(texts):  # images among them
        return [*results, {"role": message.role, "content": parts}]
    user = [{"role": message.role, "content": "\n".join(texts)}] if texts else []
    return results + user


def _tool_message(block: ToolResultBlock, where: str) -> dict[str, Any]:
    if isinstance(block.content, list):
        parts: list[str] = []
        for k, part in enumerate(block.content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise BadRequestError(
                    f"{where}.content[{k}]: a tool result's content may hold text blocks only "
                    f"here, not {str(kind)[:32]!r}.",
                    param=f"{where}.content[{k}]",
                )
            parts.append(part["text"])
        text = "\n".join(parts)
    else:
        text = block.content or ""
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _chat_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: ToolChoice, has_tools: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if choice.disable_parallel_tool_use and has_tools:
        out["parallel_tool_calls"] = False
    if choice.type == "none" or not has_tools:
        # Anthropic takes a tool_choice without tools (nothing to call); chat refuses it.
        if has_tools:
            out["tool_choice"] = "none"
        return out
    if choice.type == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = "required" if choice.type == "any" else "auto"
    return out


# ----- the answer ---------------------------------------------------------------------------


def message_id(request_id: str) -> str:
    """``msg_…`` from the gateway's ``req_…``: the same hex, so one finds the other."""
    return "msg_" + request_id.removeprefix("req_")


def to_message(result: dict[str, Any], req: MessagesRequest, request_id: str) -> dict[str, Any]:
    """Anthropic's ``message`` for a chat completion that answered ``req``."""
    choices = result.get("choices") or []
    if not choices:
        raise EngineFailedError("The engine answered with no choice.", request_id=request_id)
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append(
            {"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}
        )
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    for call in calls:
        content.append(_tool_use(call, request_id))
    stop_reason, stop_sequence = stop_of(choice, req.stop_sequences or [], bool(calls))
    usage = result.get("usage") or {}
    return {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": req.model,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def _tool_use(call: dict[str, Any], request_id: str) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        # Anthropic's input is an object; an engine's parser that wrote anything else failed.
        raise EngineFailedError(
            "The engine wrote tool arguments that are not a JSON object.", request_id=request_id
        )
    return {
        "type": "tool_use",
        "id": str(call.get("id") or ""),
        "name": str(function.get("name") or ""),
        "input": arguments,
    }


def stop_of(
    choice: dict[str, Any], stop_sequences: list[str], called: bool
) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat choice."""
    if called:
        return "tool_use", None
    if choice.get("finish_reason") == "length":
        return "max_tokens", None
    # vLLM, and the transformers engine, name the stop string that ended the text.
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None
