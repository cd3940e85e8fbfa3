"""``POST /v1/responses``: the request model, and its translation to and from chat completions.

The gateway serves the Responses API as a dialect of chat: a Responses body (with the
conversation the gateway rebuilt from ``previous_response_id``, ``history``) becomes one
``ChatCompletionRequest`` (``to_chat``), which takes the one submission path like any chat call;
the chat result becomes a ``response`` object (``response_from_chat``). Pure: no I/O here.

=================================  ======================================================
Responses                          chat
=================================  ======================================================
``instructions``                   a leading ``system`` message
``input`` (a string)               one ``user`` message
``message`` items                  messages (``input_text``/``output_text`` parts → text,
                                   ``input_image`` → ``image_url`` parts)
``function_call`` items            an assistant message's ``tool_calls``
``function_call_output`` items     ``tool`` messages
``reasoning`` items                dropped (the engine reasons afresh)
``tools`` (``function``)           ``tools`` (``{"type": "function", "function": …}``)
``tool_choice``                    ``tool_choice`` (``{"type": "function", "name"}`` → chat's)
``text.format``                    ``response_format``
``max_output_tokens``              ``max_tokens``
``prompt_cache_key``               ``prompt_cache_key`` (the conversation's affinity key)
=================================  ======================================================
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictStr, field_validator

from chalicelib.errors import BadRequestError
from chalicelib.protocol.bounds import INT32_MAX, MAX_MESSAGES, MAX_TOOLS
from chalicelib.protocol.chat import ChatCompletionRequest
from chalicelib.protocol.common import GatewayRequest, validate

# OpenAI's bounds on metadata: 16 pairs, keys of 64 characters, values of 512.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# Output item types a client may send back as input, and those it may not (yet).
_CHAT_FIELDS = {
    "messages": "input",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "parallel_tool_calls": "parallel_tool_calls",
}


class ResponsesRequest(GatewayRequest):
    """The Responses create body, fields in the order of the API reference."""

    background: StrictBool | None = False
    input: str | list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_MESSAGES)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    metadata: dict[str, str] | None = None
    parallel_tool_calls: StrictBool | None = None
    previous_response_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    # Which calls share a prompt prefix (Codex sends its session id): chat's field, so the
    # conversation keeps to one endpoint (chalicelib/affinity.py).
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    reasoning: dict[str, Any] | None = None
    store: StrictBool | None = True
    stream: StrictBool | None = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_bounded(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} key-value pairs are allowed")
        for key, value in v.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"keys may be at most {MAX_METADATA_KEY_CHARS} characters and values "
                    f"{MAX_METADATA_VALUE_CHARS}"
                )
        return v

    def input_items(self) -> list[dict[str, Any]]:
        """``input`` as a list of items (a string is one user message), each with its type."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        items = []
        for i, item in enumerate(self.input):
            if not isinstance(item, dict):
                raise BadRequestError(f"input[{i}] must be an object.", param=f"input[{i}]")
            kind = item.get("type") or ("message" if "role" in item else None)
            items.append({**item, "type": kind})
        return items


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


# -- Responses → chat ---------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat takes it: a string, or parts (text and images)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where}.content must be a string or a list of parts.", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "refusal"):
            parts.append(
                {"type": "text", "text": str(part.get("text") or part.get("refusal") or "")}
            )
        elif kind == "input_image" and isinstance(part, dict) and part.get("image_url"):
            url = {
                "url": part["image_url"],
                **({"detail": part["detail"]} if part.get("detail") else {}),
            }
            parts.append({"type": "image_url", "image_url": url})
        else:
            raise BadRequestError(
                f"{where}.content[{j}]: the part type {kind!r} is not supported here; use "
                "input_text, output_text or input_image (with an image_url).",
                param=f"{where}.content[{j}].type",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def items_to_messages(items: list[dict[str, Any]], where: str = "input") -> list[dict[str, Any]]:
    """Responses items as chat messages (consecutive function calls make one assistant turn)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequestError(
                    f"{at}.role must be user, assistant, system or developer.", param=f"{at}.role"
                )
            messages.append({"role": role, "content": _text_of(item.get("content"), at)})
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    raise BadRequestError(f"{at}.{field} must be a string.", param=f"{at}.{field}")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("_calls"):
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"], last["_calls"] = [call], True
            else:
                messages.append(
                    {"role": "assistant", "content": None, "tool_calls": [call], "_calls": True}
                )
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise BadRequestError(f"{at}.call_id must be a string.", param=f"{at}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, at)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # an earlier turn's reasoning: not fed back to the engine
        else:
            raise BadRequestError(
                f"{at}: the item type {kind!r} is not supported; use message, function_call "
                "or function_call_output.",
                param=f"{at}.type",
            )
    for message in messages:
        message.pop("_calls", None)
    return messages


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise BadRequestError(
                f"tools[{i}]: the tool type {tool.get('type')!r} is not supported here; only "
                "function tools are.",
                param=f"tools[{i}].type",
            )
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise BadRequestError(
        f"tool_choice of type {choice.get('type')!r} is not supported; use auto, none, "
        'required or {"type": "function", "name": …}.',
        param="tool_choice",
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise BadRequestError(
            "text.format.type must be text, json_object or json_schema.", param="text.format"
        )
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": schema}


def to_chat(
    req: ResponsesRequest, history: list[dict[str, Any]] | None = None
) -> ChatCompletionRequest:
    """The chat request that answers ``req``, after the rebuilt conversation ``history``
    (earlier turns' items, oldest first). A problem is a 400 naming the Responses field."""
    messages = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += items_to_messages(history or [], "previous_response_id")
    messages += items_to_messages(req.input_items())
    if not any(m["role"] != "system" for m in messages):
        raise BadRequestError("input must hold at least one item.", param="input")
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "tools": _tools(req.tools),
        "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req.text),
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "user": req.user,
        "prompt_cache_key": req.prompt_cache_key,
    }
    try:
        return validate({k: v for k, v in body.items() if v is not None}, ChatCompletionRequest)
    except BadRequestError as exc:
        head = (exc.param or "").split(".")[0].split("[")[0]
        if head in _CHAT_FIELDS:
            exc.param = _CHAT_FIELDS[head] + (exc.param or "")[len(head) :]
            if head == "messages":
                exc.param = "input"
            exc.message = exc.message.replace("messages", "input").replace(
                "response_format", "text.format"
            )
        raise


# -- chat → Responses ---------------------------------------------------------------------


def skeleton(
    req: ResponsesRequest, response_id: str, created_at: float | None = None
) -> dict[str, Any]:
    """The ``response`` object before any output: what the request asked for, echoed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at if created_at is not None else time.time()),
        "status": "in_progress",
        "background": bool(req.background),
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": req.reasoning or {"effort": None, "summary": None},
        "store": req.store is not False,
        "temperature": req.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [],
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
    }


def message_item_id(response_id: str) -> str:
    return "msg_" + response_id.removeprefix("resp_")


def reasoning_item_id(response_id: str) -> str:
    return "rs_" + response_id.removeprefix("resp_")


def call_item_id(response_id: str, index: int) -> str:
    return f"fc_{response_id.removeprefix('resp_')}_{index}"


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(response_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_item_id(response_id),
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)],
    }


def reasoning_item(response_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": reasoning_item_id(response_id),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(
    response_id: str, index: int, call: dict[str, Any], status: str = "completed"
) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": call_item_id(response_id, index),
        "call_id": call.get("id") or call_item_id(response_id, index),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    u = chat_usage or {}
    input_tokens = int(u.get("prompt_tokens") or 0)
    output_tokens = int(u.get("completion_tokens") or 0)
    return {
        "input_tokens": input_tokens,
        # The openai SDK (3.57) requires both on its Response type.
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(u.get("total_tokens") or input_tokens + output_tokens),
    }


def output_items(response_id: str, chat: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat result's first choice as output items: reasoning, message, function calls."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    items: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        items.append(reasoning_item(response_id, message["reasoning_content"]))
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        items.append(message_item(response_id, message.get("content") or ""))
    items += [call_item(response_id, i, call) for i, call in enumerate(calls)]
    return items


def response_from_chat(
    base: dict[str, Any], chat: dict[str, Any], status: str = "completed"
) -> dict[str, Any]:
    """The finished ``response`` object: ``base`` (``skeleton``) with the chat result's output.
    A generation cut by ``max_output_tokens`` is ``incomplete``; a cancelled one ``cancelled``."""
    choice = (chat.get("choices") or [{}])[0]
    out = {
        **base,
        "output": output_items(base["id"], chat),
        "usage": usage(chat.get("usage")),
        "status": status,
    }
    if status == "completed" and choice.get("finish_reason") == "length":
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "max_output_tokens"}
        for item in out["output"]:
            if item["type"] == "message":
                item["status"] = "incomplete"
    return out


def failed_response(base: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """A response whose generation failed: ``error`` is OpenAI's error object."""
    return {
        **base,
        "status": "failed",
        "error": {
            "code": error.get("code") or "server_error",
            "message": error.get("message") or "",
        },
    }
