"""Constrained decoding for the transformers engine: ``response_format`` and tools, enforced.

From a request's ``response_format`` and its function ``tools`` / ``tool_choice`` /
``parallel_tool_calls``, :func:`build_constraint` makes an :class:`OutputConstraint` (a grammar
plus how to read the output), :class:`GrammarLogitsProcessor` masks every generated token to that
grammar, and :func:`read_output` turns the generated tokens into OpenAI's ``content`` or
``tool_calls``. The grammar library is llguidance (JSON Schema and Lark grammars, a token mask per
step; see ``bench/constrained.py`` for its cost). Nothing here imports torch, numpy or llguidance
at module level: :func:`check_schema` and :func:`build_constraint` are plain Python.

What the engine emits when the model calls tools (our format; the prompt must say so where the
model's chat template cannot render tools)::

    {"tool_calls":[{"name":"get_weather","arguments":{"city":"paris"}}]}

one JSON object, each ``name`` one of the tools' names and each ``arguments`` valid against that
tool's ``parameters``. ``tool_choice``:

- ``none`` (or no tools): no tool grammar; ``response_format`` alone decides.
- ``required``: only that object, at least one call; a named function: only calls of it.
- ``auto``: the first character decides. ``{`` commits the model to the tool-call object (or,
  with a JSON ``response_format`` too, to either that object or the answer's schema); anything
  else is free text and is no longer constrained, as without tools.

``parallel_tool_calls: false`` allows exactly one call.

Forced output ends: JSON is compact (one optional space after ``,`` and ``:``, none elsewhere),
and EOS is the only token allowed once the grammar is complete. A model that would not end by
itself (a random-weight one writes strings forever) is closed in time: once the tokens left reach
the reserve (the tokens the shortest completion needs from the start, plus a margin), each step
allows only the tokens that close what is open (a string's quote, ``}`` / ``]``, then ``,`` /
``:``, then the shortest values). Output can still stop at ``max_tokens`` when the schema's
shortest document is longer than that; then ``finish_reason`` is ``length``, as on OpenAI.

Errors: :class:`UnsupportedSchemaError` (a 400 naming ``response_format``, ``tools``,
``tool_choice`` or ``parallel_tool_calls``) for what this engine cannot enforce, checked before
generation; :class:`ConstraintError` when, during generation, the model's vocabulary cannot write
what the grammar requires (the tiny offline model's tokenizer is lowercase: ``"Celsius"`` is
unwritable).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hpc_functions.engines.base import EngineError

if TYPE_CHECKING:
    import torch

# OpenAI's documented limits for structured outputs and function calling.
MAX_TOOLS = 128
MAX_PROPERTIES = 5000  # object properties in one schema, all levels together
MAX_ENUM_VALUES = 1000  # enum values in one schema, all enums together
# Ours: bounds what one request can make the grammar compiler and the checker do.
MAX_SCHEMA_BYTES = 128 * 1024  # one schema, serialized
MAX_TOOLS_SCHEMA_BYTES = 1024 * 1024  # all tools' parameters together
MAX_SCHEMA_DEPTH = 16  # levels of nested subschemas (properties, items, anyOf, $defs...)
# Tokens kept for closing on top of the shortest completion: each level the model opened beyond
# the shortest document needs about one more token to close.
CLOSING_MARGIN_TOKENS = 8

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SCHEMA_NAME = TOOL_NAME
FORMATS = frozenset(
    ["date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"]
)
TYPES = frozenset(["object", "array", "string", "number", "integer", "boolean", "null"])
_ANNOTATIONS = frozenset(
    [
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "deprecated",
        "readOnly",
        "writeOnly",
    ]
)
_KEYWORDS = frozenset(
    [
        "type",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]
)
# Known JSON Schema keywords outside OpenAI's subset, refused with a reason rather than ignored.
_REFUSED = {
    "allOf": "use anyOf or one schema",
    "oneOf": "use anyOf",
    "not": "",
    "if": "",
    "then": "",
    "else": "",
    "patternProperties": "",
    "propertyNames": "",
    "unevaluatedProperties": "",
    "unevaluatedItems": "",
    "dependentRequired": "",
    "dependentSchemas": "",
    "dependencies": "",
    "minProperties": "",
    "maxProperties": "",
    "contains": "",
    "minContains": "",
    "maxContains": "",
    "uniqueItems": "",
    "prefixItems": "",
    "additionalItems": "",
    "$id": "refs must be local (#/...)",
    "$anchor": "refs must be local (#/...)",
    "$dynamicRef": "",
    "$dynamicAnchor": "",
    "$recursiveRef": "",
    "x-guidance": "it is an engine setting",
}
_LOOKAROUND = re.compile(r"\(\?<?[=!]|\\[1-9]|\\k<")
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?"}

Mode = Literal["json", "tools", "tools_or_text", "tools_or_json"]


class UnsupportedSchemaError(EngineError, ValueError):
    """A ``response_format`` or tools request this engine cannot enforce (a 400 with ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)


class ConstraintError(EngineError):
    """Generation cannot follow the grammar: the model's vocabulary cannot write what it needs."""


# ----- checking ---------------------------------------------------------------------------


def check_schema(schema: Any, *, param: str = "response_format", where: str = "schema") -> None:
    """Refuse a JSON Schema outside OpenAI's structured-outputs subset or past our bounds.

    The root must be ``{"type": "object", ...}``. Supported: ``type`` (one or a list),
    ``properties``, ``required``, ``additionalProperties``, ``enum``, ``const``, ``anyOf``,
    local ``$ref`` with ``$defs`` / ``definitions`` (recursion included), ``items``,
    ``minItems`` / ``maxItems``, ``pattern`` (no lookaround or backreference), ``format`` (see
    ``FORMATS``), ``minLength`` / ``maxLength``, numeric bounds and ``multipleOf``; annotations
    (``title``, ``description``, ``default``...) and ``x-`` extensions are ignored. Anything else
    raises :class:`UnsupportedSchemaError` naming ``param`` and where in the schema it is.
    """
    if not isinstance(schema, dict):
        raise UnsupportedSchemaError(f"{where} must be a JSON object", param=param)
    try:
        size_bytes = len(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise UnsupportedSchemaError(f"{where} is not JSON: {exc}", param=param) from exc
    if size_bytes > MAX_SCHEMA_BYTES:
        raise UnsupportedSchemaError(
            f"{where} is {size_bytes} bytes; at most {MAX_SCHEMA_BYTES} are supported", param=param
        )
    if schema.get("type") != "object":
        raise UnsupportedSchemaError(f'{where} must have "type": "object" at its root', param=param)
    checker = _SchemaChecker(schema, param)
    checker.check(schema, where, 0)


@dataclass
class _SchemaChecker:
    root: dict[str, Any]
    param: str
    properties: int = 0
    enum_values: int = 0

    def fail(self, where: str, message: str) -> UnsupportedSchemaError:
        return UnsupportedSchemaError(f"{where}: {message}", param=self.param)

    def check(self, node: Any, where: str, depth: int) -> None:
        if depth > MAX_SCHEMA_DEPTH:
            raise self.fail(where, f"nested deeper than {MAX_SCHEMA_DEPTH} levels")
        if not isinstance(node, dict):
            raise self.fail(where, "a schema must be a JSON object")
        for key, value in node.items():
            if key in _ANNOTATIONS or (key.startswith("x-") and key != "x-guidance"):
                continue
            if key in _REFUSED:
                reason = _REFUSED[key]
                raise self.fail(
                    where, f"{key!r} is not supported" + (f" ({reason})" if reason else "")
                )
            if key not in _KEYWORDS:
                raise self.fail(where, f"unknown keyword {key!r}")
            self.keyword(key, value, node, f"{where}.{key}", depth)

    def keyword(self, key: str, value: Any, node: dict[str, Any], where: str, depth: int) -> None:
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not types or any(t not in TYPES for t in types):
                raise self.fail(where, f"must be one of {sorted(TYPES)} or a list of them")
        elif key == "enum":
            if not isinstance(value, list) or not value:
                raise self.fail(where, "must be a non-empty list")
            self.enum_values += len(value)
            if self.enum_values > MAX_ENUM_VALUES:
                raise self.fail(where, f"more than {MAX_ENUM_VALUES} enum values in one schema")
        elif key == "anyOf":
            if not isinstance(value, list) or not value:
                raise self.fail(where, "must be a non-empty list of schemas")
            for i, sub in enumerate(value):
                self.check(sub, f"{where}[{i}]", depth + 1)
        elif key in ("$defs", "definitions"):
            if not isinstance(value, dict):
                raise self.fail(where, "must map names to schemas")
            for name, sub in value.items():
                self.check(sub, f"{where}.{name}", depth + 1)
        elif key == "$ref":
            self.check_ref(value, where)
        elif key == "properties":
            if not isinstance(value, dict):
                raise self.fail(where, "must map property names to schemas")
            self.properties += len(value)
            if self.properties > MAX_PROPERTIES:
                raise self.fail(where, f"more than {MAX_PROPERTIES} properties in one schema")
            for name, sub in value.items():
                self.check(sub, f"{where}.{name}", depth + 1)
        elif key == "required":
            names = value if isinstance(value, list) else None
            if names is None or any(not isinstance(n, str) for n in names):
                raise self.fail(where, "must be a list of property names")
            if len(set(names)) != len(names):
                raise self.fail(where, "lists a property twice")
            known = node.get("properties") or {}
            missing = [n for n in names if n not in known]
            if missing and node.get("additionalProperties") is False:
                raise self.fail(where, f"{missing} are required but not in properties")
        elif key == "additionalProperties":
            if not isinstance(value, bool):
                self.check(value, where, depth + 1)
        elif key == "items":
            if isinstance(value, list):
                raise self.fail(where, "must be one schema (tuple items are not supported)")
            self.check(value, where, depth + 1)
        elif key in ("minItems", "maxItems", "minLength", "maxLength"):
            if not _is_int(value) or value < 0:
                raise self.fail(where, "must be a non-negative integer")
            low, high = (
                ("minItems", "maxItems") if key.endswith("Items") else ("minLength", "maxLength")
            )
            if _is_int(node.get(low)) and _is_int(node.get(high)) and node[low] > node[high]:
                raise self.fail(where, f"{low} is above {high}")
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if not _is_number(value) or (key == "multipleOf" and value <= 0):
                raise self.fail(
                    where, "must be a number" + (" above 0" if key == "multipleOf" else "")
                )
        elif key == "pattern":
            self.check_pattern(value, where)
        elif key == "format" and value not in FORMATS:
            raise self.fail(where, f"format {value!r} is not supported (one of {sorted(FORMATS)})")

    def check_ref(self, ref: Any, where: str) -> None:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(where, "only local refs (#, #/$defs/...) are supported")
        target: Any = self.root
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise self.fail(where, f"{ref!r} is not a JSON pointer")
        for part in pointer.split("/")[1:] if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.fail(where, f"{ref!r} points at nothing")
            target = target[part]
        if not isinstance(target, dict):
            raise self.fail(where, f"{ref!r} does not point at a schema")

    def check_pattern(self, pattern: Any, where: str) -> None:
        if not isinstance(pattern, str):
            raise self.fail(where, "must be a string")
        if _LOOKAROUND.search(pattern):
            raise self.fail(where, "lookarounds and backreferences are not supported")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(where, f"not a valid regular expression: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> None:
    """Refuse tools, ``tool_choice`` or ``parallel_tool_calls`` this engine cannot serve."""
    _tool_plan(tools, tool_choice, parallel_tool_calls)


def _tool_plan(
    tools: Any, tool_choice: Any, parallel_tool_calls: Any
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The tools (name, parameters) a call may use, and the choice: auto / required / None."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise UnsupportedSchemaError(
            "parallel_tool_calls must be true or false", param="parallel_tool_calls"
        )
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):
            raise UnsupportedSchemaError(
                "tool_choice needs tools to choose from", param="tool_choice"
            )
        return [], None
    if not isinstance(tools, list):
        raise UnsupportedSchemaError("tools must be a list", param="tools")
    if len(tools) > MAX_TOOLS:
        raise UnsupportedSchemaError(f"at most {MAX_TOOLS} tools are supported", param="tools")
    functions: list[tuple[str, dict[str, Any]]] = []
    total_bytes = 0
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise UnsupportedSchemaError(
                f'{where}: only {{"type": "function"}} tools are supported', param="tools"
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise UnsupportedSchemaError(f"{where}.function must be an object", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise UnsupportedSchemaError(
                f"{where}.function.name must be 1-64 letters, digits, _ or -", param="tools"
            )
        if any(name == other for other, _ in functions):
            raise UnsupportedSchemaError(f"{where}: two tools are named {name!r}", param="tools")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        check_schema(parameters, param="tools", where=f"{where}.function.parameters")
        total_bytes += len(json.dumps(parameters))
        if total_bytes > MAX_TOOLS_SCHEMA_BYTES:
            raise UnsupportedSchemaError(
                f"the tools' parameters exceed {MAX_TOOLS_SCHEMA_BYTES} bytes together",
                param="tools",
            )
        functions.append((name, parameters))
    if tool_choice in (None, "auto"):
        return functions, "auto"
    if tool_choice == "none":
        return functions, None
    if tool_choice == "required":
        return functions, "required"
    named = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not (
        isinstance(tool_choice, dict) and tool_choice.get("type") == "function"
    ) or not isinstance(named, dict):
        raise UnsupportedSchemaError(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    chosen = [(n, p) for n, p in functions if n == named.get("name")]
    if not chosen:
        raise UnsupportedSchemaError(
            f"tool_choice names {named.get('name')!r}, which is not among the tools",
            param="tool_choice",
        )
    return chosen, "required"


# ----- the constraint ---------------------------------------------------------------------


@dataclass(frozen=True)
class OutputConstraint:
    """What one request's output must be: an llguidance grammar and how to read the output.

    ``json_grammars`` are the JSON branches on their own (the closing reserve is computed from
    the longest of their shortest documents). ``param`` names the request field errors blame.
    """

    grammar: str
    mode: Mode
    param: str
    json_grammars: tuple[str, ...]
    tool_names: tuple[str, ...] = ()


def build_constraint(
    response_format: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    parallel_tool_calls: Any = None,
) -> OutputConstraint | None:
    """The constraint a chat request asks for, or None for plain text. Checks everything first:
    raises :class:`UnsupportedSchemaError` naming the field at fault."""
    answer = _answer_schema(response_format)
    functions, choice = _tool_plan(tools, tool_choice, parallel_tool_calls)
    if choice is None:
        if answer is None:
            return None
        grammar = _json_grammar(answer)
        return OutputConstraint(grammar, "json", "response_format", (grammar,))
    calls = _calls_schema(functions, parallel_tool_calls is not False)
    names = tuple(name for name, _ in functions)
    if choice == "required":
        return OutputConstraint(
            _json_grammar(calls), "tools", "tools", (_json_grammar(calls),), names
        )
    if answer is None:
        lark = f"start: TEXT? | calls\nTEXT: /[^{{](.|\\n)*/\ncalls: {_lark_json(calls)}\n"
        return OutputConstraint(
            _lark(lark), "tools_or_text", "tools", (_json_grammar(calls),), names
        )
    lark = f"start: calls | answer\ncalls: {_lark_json(calls)}\nanswer: {_lark_json(answer)}\n"
    branches = (_json_grammar(calls), _json_grammar(answer))
    return OutputConstraint(_lark(lark), "tools_or_json", "tools", branches, names)


def _answer_schema(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise UnsupportedSchemaError(
            'response_format.type must be "text", "json_object" or "json_schema"',
            param="response_format",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise UnsupportedSchemaError(
            "response_format.json_schema must be an object", param="response_format"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise UnsupportedSchemaError(
            "response_format.json_schema.name must be 1-64 letters, digits, _ or -",
            param="response_format",
        )
    schema = spec.get("schema")
    if schema is None:
        return {"type": "object"}
    check_schema(schema, param="response_format", where="response_format.json_schema.schema")
    return dict(schema)


def _calls_schema(functions: list[tuple[str, dict[str, Any]]], parallel: bool) -> dict[str, Any]:
    # Each tool's parameters go under $defs so that its own refs ("#/$defs/x", "#") still
    # resolve: they are rewritten to point below its new place.
    defs = {f"tool{i}": _rebase_refs(p, f"#/$defs/tool{i}") for i, (_, p) in enumerate(functions)}
    call = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": {"$ref": f"#/$defs/tool{i}"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, (name, _) in enumerate(functions)
    ]
    calls: dict[str, Any] = {"type": "array", "items": {"anyOf": call}, "minItems": 1}
    if not parallel:
        calls["maxItems"] = 1
    return {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
        "additionalProperties": False,
        "$defs": defs,
    }


def _rebase_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (base + v[1:] if k == "$ref" and isinstance(v, str) else _rebase_refs(v, base))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(v, base) for v in node]
    return node


def _json_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_COMPACT)  # type: ignore[arg-type]


def _lark_json(schema: dict[str, Any]) -> str:
    """A JSON Schema as a Lark rule body, with the same whitespace options."""
    return "%json " + json.dumps({**schema, "x-guidance": _COMPACT})


def _lark(lark: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(lark)


# ----- the vocabulary ---------------------------------------------------------------------


class TokenVocabulary:
    """The bytes each token id writes, as the grammar sees them; one per tokenizer.

    Constrained output is the concatenation of these bytes (:meth:`text`), which is what the
    grammar checked: a tokenizer's own ``decode`` may differ (WordPiece puts spaces between
    words, some tokenizers clean up spaces before punctuation). Byte-level BPE, SentencePiece
    and other fast tokenizers come from llguidance; WordPiece (BERT-style, the tiny offline
    model's) is read here: ``##x`` writes ``x``, a word token writes itself, with no space.
    """

    def __init__(
        self, tokenizer: Any, lltokenizer: Any, token_bytes: list[bytes], eos_ids: list[int]
    ):
        import torch

        self.tokenizer = tokenizer
        self.lltokenizer = lltokenizer
        self.token_bytes = token_bytes
        self.eos_ids = eos_ids
        self.vocab_size = len(token_bytes)
        self.tiers = _closing_tiers(token_bytes, eos_ids, torch)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, *, vocab_size: int, eos_ids: Sequence[int]
    ) -> TokenVocabulary:
        """Cached per tokenizer object (building reads the whole vocabulary)."""
        key = (vocab_size, tuple(eos_ids))
        with _cache_lock:
            cached = _vocab_cache.get(tokenizer)
            if cached is not None and cached[0] == key:
                return cached[1]
        vocabulary = cls._build(tokenizer, vocab_size, list(eos_ids))
        with _cache_lock:
            _vocab_cache[tokenizer] = (key, vocabulary)
        return vocabulary

    @classmethod
    def _build(cls, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> TokenVocabulary:
        import llguidance
        import llguidance.hf

        if not eos_ids:
            raise ConstraintError("constrained decoding needs the model's eos token")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        if type(decoder).__name__ == "WordPiece":
            token_bytes = _wordpiece_bytes(
                tokenizer, vocab_size, str(getattr(decoder, "prefix", "##"))
            )
            wrapper = llguidance.TokenizerWrapper(_GreedyTokenizer(tokenizer, token_bytes))
            lltokenizer = llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=eos_ids)
            return cls(tokenizer, lltokenizer, token_bytes, eos_ids)
        try:
            lltokenizer = llguidance.hf.from_tokenizer(tokenizer, vocab_size, eos_ids)
        except (ValueError, TypeError) as exc:  # llguidance: not a fast tokenizer / unknown decoder
            raise ConstraintError(
                f"this model's tokenizer cannot be used for constrained decoding: {exc}"
            ) from exc
        token_bytes = [
            b"" if lltokenizer.is_special_token(i) else lltokenizer.decode_bytes([i])
            for i in range(vocab_size)
        ]
        return cls(tokenizer, lltokenizer, token_bytes, eos_ids)

    def text(self, ids: Sequence[int]) -> str:
        """What these tokens write, as the grammar saw it."""
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def plain_text(self, ids: Sequence[int]) -> str:
        """The tokenizer's own decoding (for free text, as the engine decodes unconstrained)."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return str(text)


_vocab_cache: weakref.WeakKeyDictionary[Any, tuple[Any, TokenVocabulary]] = (
    weakref.WeakKeyDictionary()
)
_cache_lock = threading.Lock()


def _wordpiece_bytes(tokenizer: Any, vocab_size: int, prefix: str) -> list[bytes]:
    special = set(tokenizer.all_special_ids)
    token_bytes = [b""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if i < vocab_size and i not in special:
            token_bytes[i] = token.removeprefix(prefix).encode()
    return token_bytes


class _GreedyTokenizer:
    """Tokenizes bytes into this vocabulary by longest match, as llguidance needs for forced text.

    Its tokens must write exactly the bytes asked for: a normalizing tokenizer (BERT lowercases)
    would give tokens for other bytes and the grammar would disagree with itself. Bytes no token
    can write raise, which puts the matcher in an error state that the processor reports.
    """

    def __init__(self, tokenizer: Any, token_bytes: list[bytes]) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.tokens = token_bytes
        self.special_token_ids = [i for i, b in enumerate(token_bytes) if not b]
        self.ids: dict[bytes, int] = {}
        for i, b in enumerate(token_bytes):
            if b:
                self.ids.setdefault(b, i)
        self.longest = max((len(b) for b in token_bytes), default=1)

    def __call__(self, data: bytes) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(data):
            for length in range(min(self.longest, len(data) - i), 0, -1):
                token = self.ids.get(data[i : i + length])
                if token is not None:
                    out.append(token)
                    i += length
                    break
            else:
                raise ValueError(f"no token of this vocabulary writes {data[i : i + 12]!r}")
        return out


@dataclass(frozen=True)
class _Tiers:
    """Token sets the closing policy prefers, in order (bool masks over the vocabulary)."""

    eos: torch.Tensor
    close_string: torch.Tensor  # `"`, `"}`, `",`...: ends the open string
    close_container: torch.Tensor  # `}`, `]`, `}]`...
    separators: torch.Tensor  # `,` `:`
    whole_values: torch.Tensor  # `""`, `0`, `null`, `{}`, `[]`, `true`, `false`
    value_starts: torch.Tensor  # `"`, `{`, `[`, `-`


def _closing_tiers(token_bytes: list[bytes], eos_ids: list[int], torch: Any) -> _Tiers:
    def mask(test: Any) -> Any:
        return torch.tensor([bool(b) and test(b) for b in token_bytes], dtype=torch.bool)

    structural = set(b'"}],:')
    eos = torch.zeros(len(token_bytes), dtype=torch.bool)
    eos[[i for i in eos_ids if i < len(token_bytes)]] = True
    return _Tiers(
        eos=eos,
        close_string=mask(lambda b: b[0] == ord('"') and set(b) <= structural),
        close_container=mask(lambda b: set(b) <= set(b"}]")),
        separators=mask(lambda b: set(b) <= set(b",:")),
        whole_values=mask(lambda b: b in (b'""', b"0", b"null", b"{}", b"[]", b"true", b"false")),
        value_starts=mask(lambda b: b in (b'"', b"{", b"[", b"-")),
    )


# ----- the logits processor ---------------------------------------------------------------


@dataclass
class _Row:
    matcher: Any
    active: bool = True  # False once finished, or once free text in tools_or_text
    in_string: bool = False
    escaped: bool = False
    started: bool = False
    closing: bool = False


@dataclass
class GrammarLogitsProcessor:
    """Masks each row's scores to its grammar; put it before the sampler in ``generate``.

    ``prompt_len`` is the (left-padded) prompt width, ``rows`` the batch rows (prompts times n),
    ``max_new_tokens`` the budget the closing reserve counts down from. ``pad_id`` is what
    ``generate`` feeds a finished row. ``closed_rows`` lists the rows the closing policy had to
    end (the wiring may count them).
    """

    constraint: OutputConstraint
    vocabulary: TokenVocabulary
    prompt_len: int
    rows: int
    max_new_tokens: int
    pad_id: int | None = None
    closed_rows: set[int] = field(default_factory=set)
    reserve_tokens: int = 0
    _rows: list[_Row] = field(default_factory=list)
    _bitmask: Any = None

    def __post_init__(self) -> None:
        import llguidance
        import numpy as np

        template = llguidance.LLMatcher(
            self.vocabulary.lltokenizer, self.constraint.grammar, log_level=0
        )
        if template.is_error():
            raise UnsupportedSchemaError(
                f"cannot enforce this schema: {_first_line(template.get_error())}",
                param=self.constraint.param,
            )
        self._rows = [_Row(template.deep_copy()) for _ in range(self.rows)]
        words = (self.vocabulary.vocab_size + 31) // 32
        self._bitmask = np.zeros((self.rows, words), dtype=np.int32)
        shortest = max(self._shortest(g) for g in self.constraint.json_grammars)
        self.reserve_tokens = min(self.max_new_tokens, shortest + CLOSING_MARGIN_TOKENS)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import numpy as np
        import torch

        step = input_ids.shape[1] - self.prompt_len
        if step > 0:
            for r, token in enumerate(input_ids[:, -1].tolist()):
                self._consume(r, int(token))
        if not any(row.active for row in self._rows):
            return scores  # finished, or free text: nothing to mask
        closing = self.max_new_tokens - step <= self.reserve_tokens
        bitmask = self._bitmask
        for r, row in enumerate(self._rows):
            if not row.active:
                bitmask[r] = -1
                continue
            row.matcher.unsafe_compute_mask_ptr(bitmask[r].ctypes.data, bitmask[r].nbytes)
            if row.matcher.is_error() or not bitmask[r].any():
                raise self._error(row)
        vocab = self.vocabulary.vocab_size
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, count=vocab, bitorder="little")
        allowed = torch.from_numpy(bits).view(torch.bool)
        for r, row in enumerate(self._rows):
            # tools_or_text: text may end at any time; only a started tool call must be closed.
            if closing and row.active and (row.started or self.constraint.mode != "tools_or_text"):
                if not row.closing:
                    row.closing = True
                    self.closed_rows.add(r)
                allowed[r] = self._closing_mask(allowed[r], row.in_string)
        width = scores.shape[-1]
        if width != vocab:  # the model's embedding rows past the tokenizer are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, width - vocab), value=False)
            allowed[[r for r, row in enumerate(self._rows) if not row.active]] = True
        # transformers declares the legacy FloatTensor; torch types its ops as returning Tensor.
        return torch.where(allowed.to(scores.device), scores, float("-inf"))  # type: ignore[return-value]

    def _consume(self, r: int, token: int) -> None:
        row = self._rows[r]
        if not row.active:
            return
        if token in self.vocabulary.eos_ids or token == self.pad_id:
            row.active = False  # finished (eos, or generate padding a row a stop string ended)
            return
        if not row.matcher.consume_token(token):
            raise self._error(row)
        data = self.vocabulary.token_bytes[token]
        if not row.started and data:
            row.started = True
            if self.constraint.mode == "tools_or_text" and data[:1] != b"{":
                row.active = False  # free text: the grammar has nothing more to say
                return
        for byte in data:
            if row.escaped:
                row.escaped = False
            elif row.in_string and byte == 0x5C:  # backslash
                row.escaped = True
            elif byte == 0x22:  # quote
                row.in_string = not row.in_string

    def _closing_mask(self, allowed: torch.Tensor, in_string: bool) -> torch.Tensor:
        t = self.vocabulary.tiers
        order = (
            [t.eos, t.close_string]
            if in_string
            else [t.eos, t.close_container, t.separators, t.whole_values, t.value_starts]
        )
        for tier in order:
            narrowed = allowed & tier
            if bool(narrowed.any()):
                return narrowed
        return allowed

    def _shortest(self, grammar: str) -> int:
        """Tokens the closing policy needs for a whole document (taking the first allowed)."""
        import llguidance
        import numpy as np
        import torch

        matcher = llguidance.LLMatcher(self.vocabulary.lltokenizer, grammar, log_level=0)
        vocab = self.vocabulary.vocab_size
        row = _Row(matcher)
        bitmask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
        for count in range(self.max_new_tokens + 1):
            matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
            if matcher.is_error():
                raise self._error(row)
            bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab]
            allowed = self._closing_mask(torch.from_numpy(bits).view(torch.bool), row.in_string)
            choice = int(allowed.nonzero()[0]) if bool(allowed.any()) else None
            if choice is None:
                raise self._error(row)
            if choice in self.vocabulary.eos_ids:
                return count
            matcher.consume_token(choice)
            for byte in self.vocabulary.token_bytes[choice]:
                if byte == 0x22:
                    row.in_string = not row.in_string
        return self.max_new_tokens

    def _error(self, row: _Row) -> EngineError:
        if row.matcher.is_error():
            reason = _first_line(row.matcher.get_error())
        else:
            reason = "no token of its vocabulary continues the output"
        return ConstraintError(
            f"this model cannot write output that follows the {self.constraint.param} "
            f"grammar: {reason}",
            param=self.constraint.param,
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"


# ----- reading the output -----------------------------------------------------------------


@dataclass(frozen=True)
class ParsedOutput:
    """A choice's message: ``content`` or ``tool_calls`` (OpenAI's shape), never both set."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def finish_reason(self) -> str | None:
        """``tool_calls`` when the model called tools; otherwise the engine's own reason."""
        return "tool_calls" if self.tool_calls else None


def read_output(
    constraint: OutputConstraint | None, token_ids: Sequence[int], vocabulary: TokenVocabulary
) -> ParsedOutput:
    """A choice's generated tokens (without eos or padding) as ``content`` or ``tool_calls``.

    An output cut short by ``max_tokens`` is returned as ``content`` (the partial text), so the
    engine's ``finish_reason: "length"`` tells the client, as OpenAI does.
    """
    if constraint is None:
        return ParsedOutput(vocabulary.plain_text(token_ids))
    text = vocabulary.text(token_ids)
    if constraint.mode == "json":
        return ParsedOutput(text)
    if constraint.mode == "tools_or_text" and not text.startswith("{"):
        return ParsedOutput(vocabulary.plain_text(token_ids))
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
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": json.dumps(
                    call["arguments"], ensure_ascii=False, separators=(",", ":")
                ),
            },
        }
        for call in calls
    ]


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
