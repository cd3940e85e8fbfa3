"""Our tool-call format, both ways: what the prompt tells a model, and how its output reads.

A model on the transformers engine calls tools by writing one JSON object (the grammar of
``constrained`` enforces it)::

    {"tool_calls":[{"name":"get_weather","arguments":{"city":"paris"}}]}

:func:`tools_instructions` tells a model so where its chat template cannot render tools, and
:func:`calls_as_text` writes an earlier assistant turn's OpenAI ``tool_calls`` back in that form.
:func:`read_output` reads a finished choice as OpenAI's ``content`` or ``tool_calls``;
:class:`ToolCallStream` reads the same object as it is generated and gives OpenAI's streamed
``delta.tool_calls`` entries, so a streamed call reassembles into exactly the call the plain
answer would hold (same name, same ``arguments`` string).

A call's ``arguments`` string is the object as the model wrote it, less the whitespace outside
strings (the grammar allows one optional space after ``,`` and ``:``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpc_functions.engines.constrained import OutputConstraint, TokenVocabulary


@dataclass(frozen=True)
class ParsedOutput:
    """A choice's message: ``content`` or ``tool_calls`` (OpenAI's shape), never both set."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def finish_reason(self) -> str | None:
        """``tool_calls`` when the model called tools; otherwise the engine's own reason."""
        return "tool_calls" if self.tool_calls else None


def output_text(
    constraint: OutputConstraint | None, token_ids: Sequence[int], vocabulary: TokenVocabulary
) -> str:
    """The text of a choice's tokens: as the grammar wrote it (constrained JSON), or as the
    tokenizer decodes it (free text, and text that ``tool_choice: auto`` left free)."""
    if constraint is None:
        return vocabulary.plain_text(token_ids)
    text = vocabulary.text(token_ids)
    if constraint.mode == "tools_or_text" and not text.startswith("{"):
        return vocabulary.plain_text(token_ids)
    return text


def read_output(
    constraint: OutputConstraint | None, token_ids: Sequence[int], vocabulary: TokenVocabulary
) -> ParsedOutput:
    """A choice's generated tokens (without eos or padding) as ``content`` or ``tool_calls``.

    An output cut short by ``max_tokens`` is returned as ``content`` (the partial text), so the
    engine's ``finish_reason: "length"`` tells the client, as OpenAI does.
    """
    text = output_text(constraint, token_ids, vocabulary)
    return read_text(constraint, text)


def read_text(constraint: OutputConstraint | None, text: str) -> ParsedOutput:
    """:func:`read_output` on the text :func:`output_text` gave."""
    if constraint is None or constraint.mode == "json":
        return ParsedOutput(text)
    if constraint.mode == "tools_or_text" and not text.startswith("{"):
        return ParsedOutput(text)
    calls = _tool_calls(text, constraint.tool_names)
    return ParsedOutput(text) if calls is None else ParsedOutput(None, calls)


def _tool_calls(text: str, names: tuple[str, ...]) -> list[dict[str, Any]] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"tool_calls"}:
        return None  # tools_or_json: the answer's own object
    calls = value["tool_calls"]
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and c.get("name") in names and isinstance(c.get("arguments"), dict)
        for c in calls
    ):
        return None
    stream = ToolCallStream()
    stream.feed(text)
    return stream.calls()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# ----- the prompt side --------------------------------------------------------------------


def tools_instructions(tools: list[dict[str, Any]]) -> str:
    """A system-prompt paragraph telling a model our tool-call format, for chat templates that
    cannot render tools themselves."""
    functions = [t["function"] for t in tools if isinstance(t, dict) and "function" in t]
    return (
        "You can call these functions:\n"
        + json.dumps(functions, ensure_ascii=False)
        + '\nTo call functions, reply with only a JSON object: {"tool_calls": [{"name": '
        '<function name>, "arguments": <arguments object>}]}. Otherwise reply with text.'
    )


def calls_as_text(tool_calls: list[dict[str, Any]]) -> str:
    """OpenAI ``tool_calls`` (arguments already parsed) in our format, as the model wrote them."""
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in tool_calls
    ]
    return json.dumps({"tool_calls": calls}, ensure_ascii=False, separators=(",", ":"))


# ----- reading a call as it streams -------------------------------------------------------


@dataclass
class _Call:
    index: int
    id: str = field(default_factory=new_call_id)
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Level:
    container: str  # "{" or "["
    key: str | None = None  # the key whose value is being written (objects)
    after_colon: bool = False


class ToolCallStream:
    """Reads our tool-call object as it is written; gives OpenAI's ``delta.tool_calls`` entries.

    :meth:`feed` takes the next characters of the output (the grammar's text: it only grows) and
    returns the entries they complete, in order: for each call first ``{"index", "id", "type",
    "function": {"name", "arguments": ""}}``, then ``{"index", "function": {"arguments":
    piece}}`` as the arguments are written. ``kind`` is None until the object's first key is
    read, then ``"tool_calls"``, or ``"content"`` when the object is not a tool call (a JSON
    answer under ``tool_choice: auto``): the caller then streams :attr:`text` as content.
    """

    def __init__(self) -> None:
        self.kind: str | None = None
        self.text = ""
        self._levels: list[_Level] = []
        self._in_string = False
        self._escaped = False
        self._string: list[str] = []
        self._calls: list[_Call] = []
        self._capture: _Call | None = None  # the call whose arguments are being written
        self._out: list[dict[str, Any]] = []

    def feed(self, chars: str) -> list[dict[str, Any]]:
        self.text += chars
        self._out = []
        for ch in chars:
            self._char(ch)
        return self._out

    def calls(self) -> list[dict[str, Any]]:
        """The calls read so far, whole, as a plain answer's ``message.tool_calls``."""
        return [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name or "", "arguments": "".join(c.arguments)},
            }
            for c in self._calls
        ]

    def _char(self, ch: str) -> None:
        depth = len(self._levels)
        if self._capture is not None:
            if depth == 3 and not self._in_string and ch in ",}":
                self._capture = None  # the arguments value ended; ch closes or separates
            else:
                keep = self._in_string or not ch.isspace()
                self._track(ch)
                if keep:
                    self._argument(self._capture, ch)
                return
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
                self._string_done("".join(self._string))
                return
            self._string.append(ch)
            return
        if ch == '"':
            self._in_string, self._string = True, []
        elif ch in "{[":
            if ch == "{" and depth == 2 and self.kind == "tool_calls":
                self._calls.append(_Call(len(self._calls)))
            self._levels.append(_Level(ch))
        elif ch in "}]":
            if self._levels:
                self._levels.pop()
        elif ch == ":" and self._levels:
            level = self._levels[-1]
            level.after_colon = True
            if depth == 3 and level.key == "arguments" and self._calls:
                self._capture = self._calls[-1]
        elif ch == "," and self._levels:
            self._levels[-1].key, self._levels[-1].after_colon = None, False

    def _track(self, ch: str) -> None:
        """Strings and nesting inside an arguments value (only to see where it ends)."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._levels.append(_Level(ch))
        elif ch in "}]":
            self._levels.pop()

    def _string_done(self, value: str) -> None:
        if not self._levels or self._levels[-1].container != "{":
            return
        level, depth = self._levels[-1], len(self._levels)
        if not level.after_colon:
            level.key = value
            if depth == 1 and self.kind is None:
                self.kind = "tool_calls" if value == "tool_calls" else "content"
        elif depth == 3 and level.key == "name" and self._calls:
            call = self._calls[-1]
            call.name = value
            self._out.append(
                {
                    "index": call.index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": value, "arguments": ""},
                }
            )
            if call.arguments:  # written before the name: sent now, after it
                self._out.append(
                    {"index": call.index, "function": {"arguments": "".join(call.arguments)}}
                )

    def _argument(self, call: _Call, ch: str) -> None:
        call.arguments.append(ch)
        if call.name is None:
            return  # sent once the name is known
        last = self._out[-1] if self._out else None
        if last is not None and last["index"] == call.index and "id" not in last:
            last["function"]["arguments"] += ch
        else:
            self._out.append({"index": call.index, "function": {"arguments": ch}})
