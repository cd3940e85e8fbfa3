"""The transformers engine: any local Hugging Face model directory, on CPU or one GPU.

It serves the offline stack and the tests, so it runs the real code path (chat template,
tokenizer, ``generate``) and answers with OpenAI-exact objects. Config::

    {"kind": "transformers", "model": "<served name>",
     "path": "<HF model dir>" | "package:<module>",   # <module>'s shipped model/ directory
     "device": "cpu" | "cuda",                         # default "cpu"
     "dtype": "auto" | "float32" | "float16" | "bfloat16",   # default float32 on CPU, auto on GPU
     "prefix_cache_entries": 8}                        # prompt-prefix KV caches kept; 0: off

A request that carries a ``cache_salt`` (the gateway gives each one its user's) reuses the KV
cache of a prefix an earlier request of the same salt ran (``prefix_cache``) and reports it in
``usage.prompt_tokens_details.cached_tokens``; one without a salt neither reads nor fills it.

A directory with sentence-transformers files (``modules.json``) or without a causal-LM
architecture is an embedding model; anything else serves chat and completions.

Generation goes through one public preparation step that the plain calls here, the streaming
module (``transformers_stream``) and the batch module (``transformers_batch``) share:

- :meth:`TransformersEngine.prepare` checks a body and gives a :class:`Prepared`: the prompt(s)
  rendered (chat template with tools, ``chat_template``) and tokenized, the sampling parameters
  (``transformers_sampling``) and the output constraint that ``response_format`` and ``tools``
  ask for (``constrained``);
- :meth:`~TransformersEngine.generate` runs one ``generate`` call over rows (the grammar's
  processor before the sampler, one constraint per row), :meth:`~TransformersEngine.finish`
  reads a row as a :class:`Choice` (text or ``tool_calls``, finish reason, tokens), and
  :meth:`~TransformersEngine.response` builds the OpenAI object.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
)
from transformers.generation.stopping_criteria import StoppingCriteriaList

from hpc_functions.engines import output_format, transformers_stream
from hpc_functions.engines.base import EngineError, EngineUnavailableError
from hpc_functions.engines.chat_template import render_chat
from hpc_functions.engines.constrained import (
    GrammarLogitsProcessor,
    OutputConstraint,
    TokenVocabulary,
    build_constraint,
)
from hpc_functions.engines.prefix_cache import PrefixCache
from hpc_functions.engines.transformers_embeddings import EmbeddingModel
from hpc_functions.engines.transformers_sampling import (
    OpenAISampler,
    SamplingParams,
    StopOnEvents,
    read_sampling,
)

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_model_path(path: str) -> Path:
    """A model directory, or ``package:<module>``: the ``model/`` dir that package ships."""
    if path.startswith("package:"):
        module = path.removeprefix("package:")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise EngineUnavailableError(f"model package {module!r} is not installed")
        resolved = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        resolved = Path(path).expanduser()
    if not (resolved / "config.json").is_file():
        raise EngineUnavailableError(f"no Hugging Face model directory at {str(resolved)!r}")
    return resolved


@dataclass(frozen=True)
class Prepared:
    """A chat or completions request checked and ready to generate (the preparation step)."""

    kind: str  # "chat_completions" or "completions"
    prompts: list[list[int]]  # token ids; chat has one prompt
    sampling: SamplingParams
    constraint: OutputConstraint | None = None
    # tool_choice named one function: OpenAI answers that forced call with finish_reason "stop".
    named_tool: bool = False
    prompt_text: str | None = None  # chat: the rendered template
    # Inputs ``generate`` passes to the model beside the token ids, one entry per row
    # (a vision-language model's ``pixel_values``: transformers_vision).
    model_inputs: dict[str, Any] | None = None
    # Whose cached prefixes this request may reuse (vLLM's field); None: no prefix caching.
    cache_salt: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def rows(self) -> list[list[int]]:
        """One row per choice: each prompt ``n`` times (OpenAI orders choices so)."""
        return [p for p in self.prompts for _ in range(self.sampling.n)]


@dataclass(frozen=True)
class Choice:
    """One generated row, read: its text (cut at a stop string), or the tool calls it wrote."""

    text: str
    finish_reason: str
    completion_tokens: int
    tool_calls: list[dict[str, Any]] | None = None
    # The stop string that ended the text (vLLM's ``stop_reason``): the Messages API answers
    # ``stop_sequence`` with it.
    stop_reason: str | None = None


class TransformersEngine:
    """One Hugging Face model loaded in this process; calls are serialised by a lock."""

    # Architectures (config.json) that generate text; any other model embeds.
    GENERATIVE_SUFFIXES: tuple[str, ...] = ("ForCausalLM",)

    def __init__(self, config: dict[str, Any]) -> None:
        self.served_name = str(config.get("model") or "")
        if not self.served_name or not config.get("path"):
            raise EngineUnavailableError("transformers engine config needs 'model' and 'path'")
        self.path = resolve_model_path(str(config["path"]))
        self.device = torch.device(str(config.get("device") or "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError("engine config asks for CUDA but no GPU is visible")
        dtype = self._dtype(config.get("dtype"))
        # Generation, tokenizers and the GPU are not safe to share between threads mid-call.
        self._lock = threading.Lock()
        self.prefix_cache = PrefixCache(int(config.get("prefix_cache_entries", 8)))

        hf_config = json.loads((self.path / "config.json").read_text())
        architectures = hf_config.get("architectures") or []
        is_causal = any(a.endswith(self.GENERATIVE_SUFFIXES) for a in architectures)
        self.is_embedding = (self.path / "modules.json").is_file() or not is_causal
        self.embedder: EmbeddingModel | None = None
        try:
            if self.is_embedding:
                self.embedder = EmbeddingModel(
                    self.path, self.served_name, self.device, dtype, self._lock
                )
                self.tokenizer, self.model = self.embedder.tokenizer, self.embedder.model
                self.context_window = self.embedder.context_window
                self.vocab_size = self.embedder.vocab_size
            else:
                self._load_generative(dtype)
        except OSError as exc:
            raise EngineUnavailableError(f"cannot load model from {str(self.path)!r}") from exc

    def _dtype(self, name: Any) -> Any:
        if name in (None, ""):
            # bfloat16 and float16 matmuls are slow or missing on many CPUs.
            return torch.float32 if self.device.type == "cpu" else "auto"
        if name == "auto":
            return "auto"
        if name not in _DTYPES:
            raise EngineUnavailableError(f"unsupported dtype {name!r}", param="dtype")
        return _DTYPES[name]

    # ----- loading -------------------------------------------------------------------------

    def _load_generative(self, dtype: Any) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        self._adopt(model)

    def _adopt(self, model: PreTrainedModel) -> None:
        """Take ``model`` (loaded, with ``self.tokenizer``) as this engine's generator."""
        # transformers wraps ``to`` with functools.wraps, which typeshed types as unbound.
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else [int(t) for t in eos or []]
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        # A model's shipped defaults (temperature 0.6, repetition_penalty...) would silently
        # change OpenAI semantics: every request states its own parameters.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id
        )
        # A vision-language model keeps its language model's settings in ``text_config``.
        text_config = getattr(model.config, "text_config", None) or model.config
        self.context_window = int(
            getattr(text_config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        # torch types Module attribute lookup as Tensor | Module; num_embeddings is an int.
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)  # type: ignore[arg-type]

    # ----- the preparation step -----------------------------------------------------------

    def prepare(self, kind: str, body: dict[str, Any]) -> Prepared:
        """``body`` checked and ready to generate; raises the ``EngineError`` that refuses it."""
        if kind == "chat_completions":
            return self.prepare_chat(body)
        if kind == "completions":
            return self.prepare_completions(body)
        raise ValueError(f"the transformers engine does not generate {kind!r}")

    def prepare_chat(self, body: dict[str, Any]) -> Prepared:
        self._require_generative("chat completions")
        _reject_unsupported(body, ("functions", "logprobs", "top_logprobs", "audio"))
        tools, tool_choice = body.get("tools") or None, body.get("tool_choice")
        constraint = build_constraint(
            body.get("response_format"), tools, tool_choice, body.get("parallel_tool_calls")
        )
        if constraint is not None:
            self.vocabulary()  # a model it cannot serve is refused before generation
        prompt = render_chat(
            self.tokenizer,
            body.get("messages") or [],
            served_name=self.served_name,
            tools=tools,
            tool_choice=tool_choice,
        )
        ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        sampling = self._sampling(body, max_tokens, len(ids), DEFAULT_CHAT_MAX_TOKENS, "messages")
        named = isinstance(tool_choice, dict) and constraint is not None
        return Prepared(
            "chat_completions",
            [ids],
            sampling,
            constraint,
            named,
            prompt,
            cache_salt=_salt(body),
        )

    def prepare_completions(self, body: dict[str, Any]) -> Prepared:
        self._require_generative("completions")
        _reject_unsupported(body, ("logprobs", "echo", "suffix"))
        if body.get("best_of") not in (None, 1, body.get("n") or 1):
            raise EngineError("best_of is not supported by this engine", param="best_of")
        prompts = self._prompt_ids(body.get("prompt"))
        longest = max(len(p) for p in prompts)
        sampling = self._sampling(
            body, body.get("max_tokens"), longest, DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
        )
        return Prepared("completions", prompts, sampling, cache_salt=_salt(body))

    def vocabulary(self) -> TokenVocabulary:
        """The token bytes constrained decoding works on (built on first use, then cached)."""
        return TokenVocabulary.from_tokenizer(
            self.tokenizer, vocab_size=self.vocab_size, eos_ids=self.eos_ids
        )

    def _prompt_ids(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise EngineError(
                "prompt must be a string, a list of strings or token ids", param="prompt"
            )
        if all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        ids: list[list[int]] = []
        for item in prompt:
            if isinstance(item, str):
                ids.append(self.tokenizer(item, add_special_tokens=True)["input_ids"])
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                if any(t < 0 or t >= self.vocab_size for t in item):
                    raise EngineError(
                        "prompt has a token id outside the vocabulary", param="prompt"
                    )
                ids.append(list(item))
            else:
                raise EngineError(
                    "prompt items must all be strings or token-id lists", param="prompt"
                )
        if any(not p for p in ids):
            raise EngineError("prompt must not be empty", param="prompt")
        return ids

    def _sampling(
        self, body: dict[str, Any], max_tokens: Any, prompt_len: int, default_max: int, param: str
    ) -> SamplingParams:
        return read_sampling(
            body,
            max_tokens,
            prompt_len=prompt_len,
            default_max=default_max,
            param=param,
            context_window=self.context_window,
            vocab_size=self.vocab_size,
        )

    # ----- generating ----------------------------------------------------------------------

    def generate(
        self,
        rows: Sequence[list[int]],
        sampling: SamplingParams,
        constraints: Sequence[OutputConstraint | None] | None = None,
        *,
        streamer: Any = None,
        stop_events: Sequence[threading.Event] = (),
        model_inputs: dict[str, Any] | None = None,
        salt: str | None = None,
        cached: list[int] | None = None,
    ) -> list[list[int]]:
        """One ``generate`` call over ``rows`` (prompts, left-padded), under the engine's lock:
        each row's new tokens, eos and padding included (:meth:`finish` reads them).

        ``model_inputs`` go to the model beside the token ids (a vision model's pixels).
        ``constraints`` has one entry per row (None: free); the grammar's processor masks the
        scores before the sampler picks. ``streamer`` gets tokens as they come (a batch of one);
        generation stops at the next token once any of ``stop_events`` is set. With a
        ``salt``, a single row reuses a cached prefix of that salt (``prefix_cache``) and leaves
        its own KV there; ``cached`` gets the number of prompt tokens reused.
        """
        width = max(len(r) for r in rows)
        # Left padding: every row's next token is then generated at the same position.
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(r)) + list(r) for r in rows], device=self.device
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        # Token ids alone name a prefix only without other inputs: an image's placeholder
        # tokens are the same for every image, so a request with images never reuses a prefix.
        reuse = (
            salt is not None
            and len(rows) == 1
            and self.prefix_cache.entries > 0
            and not model_inputs
        )
        generation_config = GenerationConfig(
            return_dict_in_generate=reuse,
            max_new_tokens=sampling.max_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            stop_strings=sampling.stop or None,
        )
        processors: list[Any] = []
        if constraints is not None and any(c is not None for c in constraints):
            processors.append(
                GrammarLogitsProcessor(
                    constraints,
                    self.vocabulary(),
                    prompt_len=width,
                    max_new_tokens=sampling.max_tokens,
                    pad_id=self.pad_id,
                )
            )
        # A model should never emit padding; banning it lets trailing pads mark a finished row.
        banned = [] if self.pad_id in self.eos_ids else [self.pad_id]
        processors.append(OpenAISampler(sampling, width, banned, self.device))
        stopping = StoppingCriteriaList([StopOnEvents(*stop_events)]) if stop_events else None
        extra: dict[str, Any] = dict(model_inputs or {})
        with self._lock, torch.inference_mode():
            if reuse:
                assert salt is not None
                past, hit = self.prefix_cache.lookup(salt, rows[0])
                if cached is not None:
                    cached.append(hit)
                if past is not None:
                    extra["cache"] = past
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=stopping,
                tokenizer=self.tokenizer if sampling.stop else None,
                streamer=streamer,
                **extra,
            )
            if reuse:
                assert salt is not None
                sequences, kv = output.sequences, getattr(output, "cache", None)
                if kv is not None and hasattr(kv, "crop"):
                    held = kv.get_seq_length()
                    self.prefix_cache.store(salt, sequences[0, :held].tolist(), kv)
                output = sequences
        rows_out: list[list[int]] = output[:, width:].tolist()
        return rows_out

    def output_text(self, tokens: Sequence[int], constraint: OutputConstraint | None) -> str:
        """What ``tokens`` (no eos or padding) write, as the plain answer reads them."""
        if constraint is None:
            text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
            # One id list decodes to one string; the signature has no overloads to say so.
            assert isinstance(text, str)
            return text
        return output_format.output_text(constraint, tokens, self.vocabulary())

    def finish(
        self,
        row: list[int],
        sampling: SamplingParams,
        constraint: OutputConstraint | None = None,
        *,
        named_tool: bool = False,
    ) -> Choice:
        """A generated row (from :meth:`generate`) as text or tool calls, with its finish
        reason and completion tokens."""
        ends = set(self.eos_ids) | {self.pad_id}
        length = next((i for i, t in enumerate(row) if t in ends), len(row))
        tokens = row[:length]
        text = self.output_text(tokens, constraint)
        found = [(i, s) for s in sampling.stop if (i := text.find(s)) >= 0]
        if found:
            # generate stopped right after the token that completed the stop string.
            cut, stop = min(found)
            return Choice(text[:cut], "stop", len(tokens), stop_reason=stop)
        finish, count = "stop", len(tokens)
        if length < len(row) and row[length] in self.eos_ids:
            count += 1  # the eos token was generated too
        elif len(tokens) >= sampling.max_tokens:
            finish = "length"
        calls = output_format.read_text(constraint, text).tool_calls
        if calls:
            return Choice(text, "stop" if named_tool else "tool_calls", count, calls)
        return Choice(text, finish, count)

    def run(self, prepared: Prepared, cached: list[int] | None = None) -> list[Choice]:
        """Every choice of a prepared request, from one ``generate`` call (``cached``: see
        :meth:`generate`)."""
        rows = prepared.rows()
        constraints = [prepared.constraint] * len(rows) if prepared.constraint else None
        new = self.generate(
            rows,
            prepared.sampling,
            constraints,
            model_inputs=prepared.model_inputs,
            salt=prepared.cache_salt,
            cached=cached,
        )
        return [
            self.finish(row, prepared.sampling, prepared.constraint, named_tool=prepared.named_tool)
            for row in new
        ]

    def response(
        self, prepared: Prepared, choices: list[Choice], cached: list[int] | None = None
    ) -> dict[str, Any]:
        """The OpenAI object for ``choices`` (indexed in order) of ``prepared``; ``cached``
        (from :meth:`run`) gives ``prompt_tokens_details`` to a salted request."""
        completion_tokens = sum(c.completion_tokens for c in choices)
        usage = transformers_stream.usage_of(prepared, completion_tokens, sum(cached or []))
        if prepared.kind == "completions":
            return {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.served_name,
                "choices": [
                    {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(choices)
                ],
                "usage": usage,
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": [
                {
                    "index": i,
                    "message": _message(c),
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    **({"stop_reason": c.stop_reason} if c.stop_reason is not None else {}),
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage,
        }

    # ----- the routes ----------------------------------------------------------------------

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prepared = self.prepare_chat(body)
        cached: list[int] = []
        return self.response(prepared, self.run(prepared, cached), cached)

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prepared = self.prepare_completions(body)
        cached: list[int] = []
        return self.response(prepared, self.run(prepared, cached), cached)

    def stream_chat_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        """Chat completion chunks as tokens are generated; ``cancel`` stops generation. The
        body is checked here, before the first chunk."""
        return transformers_stream.stream(self, self.prepare_chat(body), cancel)

    def stream_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        return transformers_stream.stream(self, self.prepare_completions(body), cancel)

    # ----- embeddings ----------------------------------------------------------------------

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.embedder is None:
            raise EngineError(
                f"model {self.served_name!r} is a generative model; it does not serve embeddings",
                param="model",
                code="model_not_supported",
            )
        return self.embedder.embeddings(body)

    def _require_generative(self, what: str) -> None:
        if self.is_embedding:
            raise EngineError(
                f"model {self.served_name!r} is an embedding model; it does not serve {what}",
                param="model",
                code="model_not_supported",
            )


def _message(choice: Choice) -> dict[str, Any]:
    if choice.tool_calls:
        # OpenAI: a message that calls tools has null content.
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": choice.tool_calls,
        }
    return {"role": "assistant", "content": choice.text, "refusal": None}


def _reject_unsupported(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if body.get(field):
            raise EngineError(f"{field} is not supported by this engine", param=field)


def _salt(body: dict[str, Any]) -> str | None:
    salt = body.get("cache_salt")
    return str(salt) if salt else None
