"""The transformers engine: any local Hugging Face model directory, on CPU or one GPU.

It serves the offline stack and the tests, so it runs the real code path (chat template,
tokenizer, ``generate``) and answers with OpenAI-exact objects. Config::

    {"kind": "transformers", "model": "<served name>",
     "path": "<HF model dir>" | "package:<module>",   # <module>'s shipped model/ directory
     "device": "cpu" | "cuda",                         # default "cpu"
     "dtype": "auto" | "float32" | "float16" | "bfloat16"}   # default float32 on CPU, auto on GPU

A directory with sentence-transformers files (``modules.json``) or without a causal-LM
architecture is an embedding model; anything else serves chat and completions.

Sampling is done by our own logits processor with a per-request ``torch.Generator``, not by
``generate(do_sample=True)``: that draws from torch's global RNG, so a seed would not reproduce
while another thread samples, and OpenAI's presence/frequency penalties have no transformers
equivalent.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from hpc_functions.engines.base import EngineError, EngineUnavailableError

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
MAX_STOP_SEQUENCES = 4
# One forward per chunk bounds activation memory for OpenAI's 2048-input maximum.
EMBEDDING_CHUNK = 128

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# sentence-transformers' 1_Pooling/config.json keys for the modes implemented in _pool.
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}


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
class _Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]
    stop: list[str]
    seed: int | None
    n: int


@dataclass(frozen=True)
class _Choice:
    text: str
    finish_reason: str
    completion_tokens: int


class _OpenAISampler(LogitsProcessor):
    """Applies OpenAI's sampling parameters and picks the next token itself.

    It returns scores that are -inf everywhere but the chosen token, so ``generate`` runs in
    greedy mode and merely follows the choice.
    """

    def __init__(self, params: _Sampling, prompt_len: int, banned: list[int], device: Any) -> None:
        self.params = params
        self.prompt_len = prompt_len
        self.banned = banned
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params
        logits = scores.float().clone()
        if self.banned:
            logits[:, self.banned] = float("-inf")
        for token_id, bias in p.logit_bias.items():
            logits[:, token_id] += bias
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] and (p.presence_penalty or p.frequency_penalty):
            counts = torch.zeros_like(logits).scatter_add_(
                1, generated, torch.ones_like(generated, dtype=logits.dtype)
            )
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        if p.temperature == 0:
            chosen = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:
                probs = _top_p_filter(probs, p.top_p)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        # transformers declares the legacy FloatTensor; torch types its ops as returning Tensor.
        return out.scatter_(1, chosen, 0.0)  # type: ignore[return-value]


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Drop a token once the mass before it already reaches top_p; the top token always stays.
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


class TransformersEngine:
    """One Hugging Face model loaded in this process; calls are serialised by a lock."""

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

        hf_config = json.loads((self.path / "config.json").read_text())
        architectures = hf_config.get("architectures") or []
        is_causal = any(a.endswith("ForCausalLM") for a in architectures)
        self.is_embedding = (self.path / "modules.json").is_file() or not is_causal
        try:
            if self.is_embedding:
                self._load_embedding(dtype)
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
        self.context_window = int(
            getattr(model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        # torch types Module attribute lookup as Tensor | Module; num_embeddings is an int.
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)  # type: ignore[arg-type]

    def _load_embedding(self, dtype: Any) -> None:
        modules = self._read_json("modules.json") or []
        types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
        transformer_path = str(types.get("Transformer", {}).get("path", ""))
        transformer_dir = self.path / transformer_path
        self.tokenizer = AutoTokenizer.from_pretrained(transformer_dir, local_files_only=True)
        model = AutoModel.from_pretrained(transformer_dir, local_files_only=True, dtype=dtype)
        self.model = model.to(self.device).eval()

        pooling_dir = types.get("Pooling", {}).get("path")
        pooling = self._read_json(f"{pooling_dir}/config.json") if pooling_dir else None
        # Without sentence-transformers files: mean pooling, unit length (as OpenAI returns).
        self.pooling = "mean"
        if pooling:
            enabled = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
            modes = [_POOLING_KEYS.get(k) for k in enabled]
            # Several modes concatenate vectors; not worth supporting until a model needs it.
            if len(modes) != 1 or modes[0] is None:
                raise EngineUnavailableError(f"unsupported pooling configuration {pooling}")
            self.pooling = modes[0]
        self.normalize = "Normalize" in types or not modules

        st_config = self._read_json(f"{transformer_path}/sentence_bert_config.json") or {}
        limits = [
            st_config.get("max_seq_length"),
            getattr(model.config, "max_position_embeddings", None),
        ]
        self.context_window = min(int(x) for x in limits if x)
        self.dimension = int(model.config.hidden_size)
        # Matryoshka models declare it in config.json, as vLLM reads it.
        matryoshka = getattr(model.config, "matryoshka_dimensions", None)
        self.matryoshka_dims = [int(d) for d in matryoshka] if matryoshka else None
        self.is_matryoshka = bool(matryoshka or getattr(model.config, "is_matryoshka", False))
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)

    def _read_json(self, relative: str) -> Any:
        file = self.path / relative.lstrip("/")
        return json.loads(file.read_text()) if file.is_file() else None

    # ----- chat and completions ------------------------------------------------------------

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._require_generative("chat completions")
        _reject_unsupported(body, ("tools", "functions", "logprobs", "top_logprobs", "audio"))
        prompt = self._render_chat(body.get("messages") or [])
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        params = self._sampling(body, max_tokens, len(ids), DEFAULT_CHAT_MAX_TOKENS, "messages")
        choices = self._generate([ids], params)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(len(ids), sum(c.completion_tokens for c in choices)),
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._require_generative("completions")
        _reject_unsupported(body, ("logprobs", "echo", "suffix"))
        if body.get("best_of") not in (None, 1, body.get("n") or 1):
            raise EngineError("best_of is not supported by this engine", param="best_of")
        prompts = self._prompt_ids(body.get("prompt"))
        longest = max(len(p) for p in prompts)
        params = self._sampling(
            body, body.get("max_tokens"), longest, DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
        )
        choices = self._generate(prompts, params)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served_name,
            # OpenAI orders choices prompt by prompt, n per prompt.
            "choices": [
                {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(choices)
            ],
            "usage": _usage(
                sum(len(p) for p in prompts), sum(c.completion_tokens for c in choices)
            ),
        }

    def stream_chat_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        """Chat completion chunks as tokens are generated; ``cancel`` stops generation."""
        from hpc_functions.engines.transformers_stream import stream_chat

        return stream_chat(self, body, cancel)

    def stream_completions(
        self, body: dict[str, Any], cancel: threading.Event | None = None
    ) -> Iterator[dict[str, Any]]:
        from hpc_functions.engines.transformers_stream import stream_completions

        return stream_completions(self, body, cancel)

    def _render_chat(self, messages: list[dict[str, Any]]) -> str:
        if not messages:
            raise EngineError("messages must not be empty", param="messages")
        if not self.tokenizer.chat_template:
            raise EngineError(
                f"model {self.served_name!r} has no chat template; use /v1/completions",
                param="messages",
                code="model_not_supported",
            )
        plain = [_plain_message(m) for m in messages]
        try:
            rendered = self.tokenizer.apply_chat_template(
                plain, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja's TemplateError: the template refused these messages
            raise EngineError(
                f"chat template rejected the messages: {exc}", param="messages"
            ) from exc
        # tokenize=False renders text; the signature has no overloads to say so.
        assert isinstance(rendered, str)
        return rendered

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
    ) -> _Sampling:
        room = self.context_window - prompt_len
        if room <= 0:
            raise _context_error(
                f"the prompt has {prompt_len} tokens; this model's context window is "
                f"{self.context_window}",
                param,
            )
        if max_tokens is None:
            max_tokens = min(default_max, room)
        elif not isinstance(max_tokens, int) or max_tokens < 1:
            raise EngineError("max_tokens must be a positive integer", param="max_tokens")
        elif max_tokens > room:
            raise _context_error(
                f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds this "
                f"model's context window of {self.context_window} tokens",
                param,
            )
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stops = [s for s in stops if s]
        if len(stops) > MAX_STOP_SEQUENCES:
            raise EngineError(f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1:
            raise EngineError("n must be a positive integer", param="n")
        temperature = 1.0 if body.get("temperature") is None else float(body["temperature"])
        if temperature < 0:
            raise EngineError("temperature must not be negative", param="temperature")
        top_p = 1.0 if body.get("top_p") is None else float(body["top_p"])
        if not 0 < top_p <= 1:
            raise EngineError("top_p must be in (0, 1]", param="top_p")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise EngineError("seed must be an integer", param="seed")
        return _Sampling(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            presence_penalty=float(body.get("presence_penalty") or 0.0),
            frequency_penalty=float(body.get("frequency_penalty") or 0.0),
            logit_bias=self._logit_bias(body.get("logit_bias")),
            stop=stops,
            seed=seed,
            n=n,
        )

    def _logit_bias(self, raw: Any) -> dict[int, float]:
        bias: dict[int, float] = {}
        for key, value in (raw or {}).items():
            try:
                token_id = int(key)
            except ValueError:
                raise EngineError("logit_bias keys must be token ids", param="logit_bias") from None
            if not 0 <= token_id < self.vocab_size:
                raise EngineError(
                    f"logit_bias token {token_id} is not in the vocabulary", param="logit_bias"
                )
            bias[token_id] = float(value)
        return bias

    def _generate(self, prompts: list[list[int]], params: _Sampling) -> list[_Choice]:
        rows = [ids for ids in prompts for _ in range(params.n)]
        width = max(len(r) for r in rows)
        # Left padding: every row's next token is then generated at the same position.
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device
        )
        generation_config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            stop_strings=params.stop or None,
        )
        # A model should never emit padding; banning it lets trailing pads mark a finished row.
        banned = [] if self.pad_id in self.eos_ids else [self.pad_id]
        sampler = _OpenAISampler(params, width, banned, self.device)
        with self._lock, torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([sampler]),
                tokenizer=self.tokenizer if params.stop else None,
            )
        return [self._finish(row, params) for row in output[:, width:].tolist()]

    def _finish(self, row: list[int], params: _Sampling) -> _Choice:
        ends = set(self.eos_ids) | {self.pad_id}
        length = next((i for i, t in enumerate(row) if t in ends), len(row))
        tokens = row[:length]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        # One id list decodes to one string; the signature has no overloads to say so.
        assert isinstance(text, str)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            # generate stopped right after the token that completed the stop string.
            return _Choice(text[:cut], "stop", len(tokens))
        if length < len(row) and row[length] in self.eos_ids:
            return _Choice(text, "stop", len(tokens) + 1)  # the eos token was generated too
        if len(tokens) >= params.max_tokens:
            return _Choice(text, "length", len(tokens))
        return _Choice(text, "stop", len(tokens))

    # ----- embeddings ----------------------------------------------------------------------

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.is_embedding:
            raise EngineError(
                f"model {self.served_name!r} is a generative model; it does not serve embeddings",
                param="model",
                code="model_not_supported",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise EngineError(
                "encoding_format must be 'float' or 'base64'", param="encoding_format"
            )
        dimensions = self._check_dimensions(body.get("dimensions"))
        inputs = self._embedding_ids(body.get("input"))
        vectors = torch.cat(
            [
                self._embed(inputs[i : i + EMBEDDING_CHUNK])
                for i in range(0, len(inputs), EMBEDDING_CHUNK)
            ]
        )
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
        vectors = vectors.to(torch.float32).cpu()
        tokens = sum(len(ids) for ids in inputs)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                for i, v in enumerate(vectors)
            ],
            "model": self.served_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _check_dimensions(self, dimensions: Any) -> int | None:
        if dimensions is None or dimensions == self.dimension:
            return None
        if not isinstance(dimensions, int) or not 0 < dimensions < self.dimension:
            raise EngineError(
                f"dimensions must be a positive integer below {self.dimension}",
                param="dimensions",
            )
        allowed = self.matryoshka_dims
        if not self.is_matryoshka or (allowed and dimensions not in allowed):
            raise EngineError(
                f"model {self.served_name!r} does not support dimensions={dimensions}: only "
                "Matryoshka models can be shortened"
                + (f" (to one of {allowed})" if allowed else ""),
                param="dimensions",
            )
        return dimensions

    def _embedding_ids(self, raw: Any) -> list[list[int]]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise EngineError("input must be a non-empty string or list", param="input")
        if all(isinstance(t, int) for t in raw):
            raw = [raw]
        ids: list[list[int]]
        if all(isinstance(t, str) for t in raw):
            ids = self.tokenizer(raw, add_special_tokens=True, truncation=False)["input_ids"]
        elif all(isinstance(t, list) and all(isinstance(i, int) for i in t) for t in raw):
            # Token ids are taken as given: the client chose them for this model's tokenizer.
            ids = [list(t) for t in raw]
            if any(not t for t in ids) or any(
                i < 0 or i >= self.vocab_size for t in ids for i in t
            ):
                raise EngineError("input has an empty list or an unknown token id", param="input")
        else:
            raise EngineError(
                "input items must all be strings or all token-id lists", param="input"
            )
        longest = max(len(t) for t in ids)
        if longest > self.context_window:
            raise _context_error(
                f"an input has {longest} tokens; this model accepts at most {self.context_window}",
                "input",
            )
        return ids

    def _embed(self, batch: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([t + [pad] * (width - len(t)) for t in batch], device=self.device)
        mask = torch.tensor(
            [[1] * len(t) + [0] * (width - len(t)) for t in batch], device=self.device
        )
        with self._lock, torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = _pool(hidden.float(), mask, self.pooling)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _require_generative(self, what: str) -> None:
        if self.is_embedding:
            raise EngineError(
                f"model {self.served_name!r} is an embedding model; it does not serve {what}",
                param="model",
                code="model_not_supported",
            )


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1  # right padding: the last real token of each row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def _encode(vector: torch.Tensor, encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 is the raw little-endian float32 array.
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _plain_message(message: dict[str, Any]) -> dict[str, str]:
    role = str(message.get("role", ""))
    content = message.get("content")
    if isinstance(content, list):
        if any(part.get("type") != "text" for part in content):
            raise EngineError("only text content parts are supported", param="messages")
        content = "\n".join(str(part.get("text", "")) for part in content)
    # Most chat templates predate OpenAI's "developer" role, which replaces "system".
    return {"role": "system" if role == "developer" else role, "content": content or ""}


def _reject_unsupported(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if body.get(field):
            raise EngineError(f"{field} is not supported by this engine", param=field)


def _context_error(message: str, param: str) -> EngineError:
    return EngineError(message, param=param, code="context_length_exceeded")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
