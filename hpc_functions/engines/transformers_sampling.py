"""OpenAI's sampling parameters for the transformers engine: read from a request, applied per token.

:func:`read_sampling` checks and reads a body's sampling fields (``max_tokens`` against the
context window, ``stop``, ``n``, ``temperature``, ``top_p``, penalties, ``logit_bias``, ``seed``)
into a :class:`SamplingParams`; :class:`OpenAISampler` applies them inside ``generate``.

Sampling is done by our own logits processor with a per-request ``torch.Generator``, not by
``generate(do_sample=True)``: that draws from torch's global RNG, so a seed would not reproduce
while another thread samples, and OpenAI's presence/frequency penalties have no transformers
equivalent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from hpc_functions.engines.base import EngineError

MAX_STOP_SEQUENCES = 4


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling, checked. Equal params can share a ``generate`` call."""

    max_tokens: int
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]
    stop: list[str]
    seed: int | None
    n: int


def read_sampling(
    body: dict[str, Any],
    max_tokens: Any,
    *,
    prompt_len: int,
    default_max: int,
    param: str,
    context_window: int,
    vocab_size: int,
) -> SamplingParams:
    """``body``'s sampling fields; ``param`` is the field a context overflow blames."""
    room = context_window - prompt_len
    if room <= 0:
        raise context_error(
            f"the prompt has {prompt_len} tokens; this model's context window is {context_window}",
            param,
        )
    if max_tokens is None:
        max_tokens = min(default_max, room)
    elif not isinstance(max_tokens, int) or max_tokens < 1:
        raise EngineError("max_tokens must be a positive integer", param="max_tokens")
    elif max_tokens > room:
        raise context_error(
            f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds this "
            f"model's context window of {context_window} tokens",
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
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        presence_penalty=float(body.get("presence_penalty") or 0.0),
        frequency_penalty=float(body.get("frequency_penalty") or 0.0),
        logit_bias=_logit_bias(body.get("logit_bias"), vocab_size),
        stop=stops,
        seed=seed,
        n=n,
    )


def _logit_bias(raw: Any, vocab_size: int) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            token_id = int(key)
        except ValueError:
            raise EngineError("logit_bias keys must be token ids", param="logit_bias") from None
        if not 0 <= token_id < vocab_size:
            raise EngineError(
                f"logit_bias token {token_id} is not in the vocabulary", param="logit_bias"
            )
        bias[token_id] = float(value)
    return bias


def context_error(message: str, param: str) -> EngineError:
    return EngineError(message, param=param, code="context_length_exceeded")


class OpenAISampler(LogitsProcessor):
    """Applies OpenAI's sampling parameters and picks the next token itself.

    It returns scores that are -inf everywhere but the chosen token, so ``generate`` runs in
    greedy mode and merely follows the choice. A grammar's processor goes before it: tokens it
    masked stay at -inf here.
    """

    def __init__(
        self, params: SamplingParams, prompt_len: int, banned: list[int], device: Any
    ) -> None:
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
                probs = top_p_filter(probs, p.top_p)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        # transformers declares the legacy FloatTensor; torch types its ops as returning Tensor.
        return out.scatter_(1, chosen, 0.0)  # type: ignore[return-value]


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Drop a token once the mass before it already reaches top_p; the top token always stays.
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)


class StopOnEvents(StoppingCriteria):
    """Stops generation once any of ``events`` is set (checked after every token)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> Any:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)
