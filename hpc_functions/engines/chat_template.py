"""OpenAI chat messages, tools included, rendered by a model's Hugging Face chat template.

:func:`render_chat` gives the prompt text. Messages keep what a template may use: ``role``
(``developer`` becomes ``system``: most templates predate it), ``content`` as text, an assistant
turn's ``tool_calls`` (``arguments`` parsed to an object, as Hugging Face templates expect) and a
``tool`` message's ``tool_call_id`` (and the ``name`` of the call it answers).

Tools reach the model one of two ways:

- a template that renders tools (its source uses ``tools``) gets them as ``tools=`` and renders
  them, and earlier tool calls, in the model's own way;
- any other template (the tiny offline model's) gets the documented fallback: a system message
  from ``output_format.tools_instructions`` describing our tool-call format (added to the first
  system message, or as one), and earlier assistant tool calls written into their content in that
  same format, so the conversation shows the model what it is asked to write. With
  ``tool_choice: "none"`` no instructions are added: the model is not to call anything.

A ``tool`` message must answer a call of an earlier assistant message (a 400 naming
``messages`` otherwise, as on OpenAI).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.output_format import calls_as_text, tools_instructions

_USES_TOOLS = re.compile(r"\btools\b")


def template_renders_tools(template: Any) -> bool:
    """Whether a chat template (a string, or a dict of named templates) uses ``tools``."""
    sources = template.values() if isinstance(template, dict) else [template]
    return any(isinstance(s, str) and _USES_TOOLS.search(s) for s in sources)


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    served_name: str,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
) -> str:
    """The prompt for ``messages``, ending with the assistant's turn open."""
    if not messages:
        raise EngineError("messages must not be empty", param="messages")
    if not tokenizer.chat_template:
        raise EngineError(
            f"model {served_name!r} has no chat template; use /v1/completions",
            param="messages",
            code="model_not_supported",
        )
    native = template_renders_tools(tokenizer.chat_template)
    rendered_messages = _messages(messages, native)
    if tools and not native and tool_choice != "none":
        rendered_messages = _with_system(rendered_messages, tools_instructions(tools))
    extra = {"tools": tools} if tools and native else {}
    try:
        rendered = tokenizer.apply_chat_template(
            rendered_messages, tokenize=False, add_generation_prompt=True, **extra
        )
    except Exception as exc:  # jinja's TemplateError: the template refused these messages
        raise EngineError(f"chat template rejected the messages: {exc}", param="messages") from exc
    # tokenize=False renders text; the signature has no overloads to say so.
    assert isinstance(rendered, str)
    return rendered


def _messages(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # tool call id -> function name, from earlier assistant turns
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise EngineError(f"messages[{i}] must be an object", param="messages")
        role = str(message.get("role", ""))
        text = _text(message.get("content"))
        # Most chat templates predate OpenAI's "developer" role, which replaces "system".
        item: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        if role == "assistant" and message.get("tool_calls"):
            calls = _parsed_calls(message["tool_calls"], i)
            called.update((c["id"], c["function"]["name"]) for c in calls)
            if native:
                item["tool_calls"] = calls
            else:
                item["content"] = (text + "\n" if text else "") + calls_as_text(calls)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in called:
                raise EngineError(
                    f"messages[{i}]: a tool message must answer a tool call of an earlier "
                    f"assistant message; tool_call_id {call_id!r} matches none",
                    param="messages",
                )
            item.update(tool_call_id=call_id, name=called[call_id])
        out.append(item)
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise EngineError("only text content parts are supported", param="messages")
        return "\n".join(str(part.get("text", "")) for part in content)
    return str(content or "")


def _parsed_calls(tool_calls: Any, i: int) -> list[dict[str, Any]]:
    where = f"messages[{i}].tool_calls"
    if not isinstance(tool_calls, list):
        raise EngineError(f"{where} must be a list", param="messages")
    calls = []
    for j, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise EngineError(f"{where}[{j}] must name a function", param="messages")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise EngineError(
                f"{where}[{j}].function.arguments must be a JSON string", param="messages"
            ) from None
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": function["name"], "arguments": parsed},
            }
        )
    return calls


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` added to the first system message, or as one (templates often allow one)."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        joined = f"{first['content']}\n\n{text}" if first["content"] else text
        return [{**first, "content": joined}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
