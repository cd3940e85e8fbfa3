"""Constrained decoding for the transformers engine: ``response_format`` and tools, enforced.

From a request's ``response_format`` and its function ``tools`` / ``tool_choice`` /
``parallel_tool_calls``, :func:`build_constraint` makes an :class:`OutputConstraint` (a grammar
plus how to read the output), :class:`GrammarLogitsProcessor` masks every generated token to that
grammar, and :func:`read_output` (``output_format``, re-exported here) turns the generated tokens
into OpenAI's ``content`` or ``tool_calls``. The grammar library is llguidance (JSON Schema and
Lark grammars, a token mask per step; see ``bench/constrained.py`` for its cost). What a request
may ask for is checked in plain Python by ``schema_subset`` (re-exported here); llguidance, torch
and numpy are imported only where a constraint is built or applied.

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
``:``, then the shortest values); ``closed_rows`` tells which rows it closed. Output can still
stop at ``max_tokens`` when the schema's shortest document is longer than that; then
``finish_reason`` is ``length``, as on OpenAI.

Errors: :class:`UnsupportedSchemaError` (a 400 naming ``response_format``, ``tools``,
``tool_choice`` or ``parallel_tool_calls``) for what this engine cannot enforce, checked before
generation; :class:`ConstraintError` when, during generation, the model's vocabulary cannot write
what the grammar requires (the tiny offline model's tokenizer is lowercase: ``"Celsius"`` is
unwritable).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.output_format import ParsedOutput, read_output, tools_instructions
from hpc_functions.engines.schema_subset import (
    UnsupportedSchemaError,
    answer_schema,
    check_schema,
    check_tools,
    tool_plan,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "ConstraintError",
    "GrammarLogitsProcessor",
    "OutputConstraint",
    "ParsedOutput",
    "TokenVocabulary",
    "UnsupportedSchemaError",
    "build_constraint",
    "check_schema",
    "check_tools",
    "read_output",
    "tools_instructions",
]

# Tokens kept for closing on top of the shortest completion: each level the model opened beyond
# the shortest document needs about one more token to close.
CLOSING_MARGIN_TOKENS = 8
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?"}

Mode = Literal["json", "tools", "tools_or_text", "tools_or_json"]


class ConstraintError(EngineError):
    """Generation cannot follow the grammar: the model's vocabulary cannot write what it needs."""


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
    answer = answer_schema(response_format)
    functions, choice = tool_plan(tools, tool_choice, parallel_tool_calls)
    if choice is None:
        if answer is None:
            return None
        grammar = _json_grammar(answer)
        return OutputConstraint(grammar, "json", "response_format", (grammar,))
    calls = _calls_schema(functions, parallel_tool_calls is not False)
    names = tuple(name for name, _ in functions)
    if choice == "required":
        grammar = _json_grammar(calls)
        return OutputConstraint(grammar, "tools", "tools", (grammar,), names)
    if answer is None:
        lark = f"start: TEXT? | calls\nTEXT: /[^{{](.|\\n)*/\ncalls: {_lark_json(calls)}\n"
        return OutputConstraint(
            _lark(lark), "tools_or_text", "tools", (_json_grammar(calls),), names
        )
    lark = f"start: calls | answer\ncalls: {_lark_json(calls)}\nanswer: {_lark_json(answer)}\n"
    branches = (_json_grammar(calls), _json_grammar(answer))
    return OutputConstraint(_lark(lark), "tools_or_json", "tools", branches, names)


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
    constraint: OutputConstraint
    reserve_tokens: int
    active: bool = True  # False once finished, or once free text in tools_or_text
    in_string: bool = False
    escaped: bool = False
    started: bool = False
    closing: bool = False

    def track(self, data: bytes) -> None:
        """Follow whether the JSON written so far is inside a string (the grammar keeps it valid)."""
        for byte in data:
            if self.escaped:
                self.escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string


class GrammarLogitsProcessor:
    """Masks each row's scores to its grammar; put it before the sampler in ``generate``.

    ``constraints`` has one entry per batch row (prompts times n), None for a row left free, so
    one ``generate`` call can mix requests (batch lines) with different formats. ``prompt_len`` is
    the (left-padded) prompt width, ``max_new_tokens`` the budget the closing reserve counts down
    from, ``pad_id`` what ``generate`` feeds a finished row. ``closed_rows`` lists the rows the
    closing policy had to end (the wiring may count them). Raises
    :class:`UnsupportedSchemaError` when llguidance cannot compile a grammar, and, from a
    ``generate`` step, :class:`ConstraintError` when a row's grammar cannot go on.
    """

    def __init__(
        self,
        constraints: Sequence[OutputConstraint | None],
        vocabulary: TokenVocabulary,
        *,
        prompt_len: int,
        max_new_tokens: int,
        pad_id: int | None = None,
    ) -> None:
        import llguidance
        import numpy as np

        self.vocabulary = vocabulary
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.pad_id = pad_id
        self.closed_rows: set[int] = set()
        compiled: dict[int, tuple[Any, int]] = {}
        self._rows: list[_Row | None] = []
        for constraint in constraints:
            if constraint is None:
                self._rows.append(None)
                continue
            if id(constraint) not in compiled:
                template = llguidance.LLMatcher(
                    vocabulary.lltokenizer, constraint.grammar, log_level=0
                )
                if template.is_error():
                    raise UnsupportedSchemaError(
                        f"cannot enforce this schema: {_first_line(template.get_error())}",
                        param=constraint.param,
                    )
                shortest = max(self._shortest(constraint, g) for g in constraint.json_grammars)
                reserve = min(max_new_tokens, shortest + CLOSING_MARGIN_TOKENS)
                compiled[id(constraint)] = (template, reserve)
            template, reserve = compiled[id(constraint)]
            self._rows.append(_Row(template.deep_copy(), constraint, reserve))
        words = (vocabulary.vocab_size + 31) // 32
        self._bitmask = np.zeros((len(self._rows), words), dtype=np.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import numpy as np
        import torch

        step = input_ids.shape[1] - self.prompt_len
        if step > 0:
            for row, token in zip(self._rows, input_ids[:, -1].tolist(), strict=True):
                if row is not None and row.active:
                    self._consume(row, int(token))
        active = [row is not None and row.active for row in self._rows]
        if not any(active):
            return scores  # finished, free text or unconstrained: nothing to mask
        bitmask = self._bitmask
        for r, row in enumerate(self._rows):
            if row is None or not row.active:
                bitmask[r] = -1
                continue
            row.matcher.unsafe_compute_mask_ptr(bitmask[r].ctypes.data, bitmask[r].nbytes)
            if row.matcher.is_error() or not bitmask[r].any():
                raise self._error(row)
        vocab = self.vocabulary.vocab_size
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, count=vocab, bitorder="little")
        allowed = torch.from_numpy(bits).view(torch.bool)
        left = self.max_new_tokens - step
        for r, row in enumerate(self._rows):
            # tools_or_text: text may end at any time; only a started tool call must be closed.
            if row is None or not row.active or left > row.reserve_tokens:
                continue
            if row.started or row.constraint.mode != "tools_or_text":
                if not row.closing:
                    row.closing = True
                    self.closed_rows.add(r)
                allowed[r] = self._closing_mask(allowed[r], row.in_string)
        width = scores.shape[-1]
        if width != vocab:  # the model's embedding rows past the tokenizer are never allowed
            allowed = torch.nn.functional.pad(allowed, (0, width - vocab), value=False)
            allowed[[r for r, a in enumerate(active) if not a]] = True
        # transformers declares the legacy FloatTensor; torch types its ops as returning Tensor.
        return torch.where(allowed.to(scores.device), scores, float("-inf"))  # type: ignore[return-value]

    def _consume(self, row: _Row, token: int) -> None:
        if token in self.vocabulary.eos_ids or token == self.pad_id:
            row.active = False  # finished (eos, or generate padding a row a stop string ended)
            return
        if not row.matcher.consume_token(token):
            raise self._error(row)
        data = self.vocabulary.token_bytes[token]
        if not row.started and data:
            row.started = True
            if row.constraint.mode == "tools_or_text" and data[:1] != b"{":
                row.active = False  # free text: the grammar has nothing more to say
                return
        row.track(data)

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

    def _shortest(self, constraint: OutputConstraint, grammar: str) -> int:
        """Tokens the closing policy needs for a whole document (taking the first allowed)."""
        import llguidance
        import numpy as np
        import torch

        vocab = self.vocabulary.vocab_size
        row = _Row(
            llguidance.LLMatcher(self.vocabulary.lltokenizer, grammar, log_level=0), constraint, 0
        )
        bitmask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
        for count in range(self.max_new_tokens + 1):
            row.matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
            if row.matcher.is_error():
                raise self._error(row)
            bits = np.unpackbits(bitmask.view(np.uint8), axis=1, count=vocab, bitorder="little")
            allowed = self._closing_mask(torch.from_numpy(bits[0]).view(torch.bool), row.in_string)
            if not bool(allowed.any()):
                raise self._error(row)
            choice = int(allowed.nonzero()[0])
            if choice in self.vocabulary.eos_ids:
                return count
            row.matcher.consume_token(choice)
            row.track(self.vocabulary.token_bytes[choice])
        return self.max_new_tokens

    def _error(self, row: _Row) -> EngineError:
        if row.matcher.is_error():
            reason = _first_line(row.matcher.get_error())
        else:
            reason = "no token of its vocabulary continues the output"
        param = row.constraint.param
        return ConstraintError(
            f"this model cannot write output that follows the {param} grammar: {reason}",
            param=param,
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"
