"""Token streaming for the transformers engine: ``generate`` in a thread, tokens as they come.

``generate`` runs in a thread of its own (holding the engine's lock, as a plain call does) and
hands each new token to a streamer of ours; the caller's thread decodes them and yields OpenAI
chunks. A ``cancel`` event stops generation at the next token (the client went away), and the
stream still ends with its finish and usage chunks, counting only the tokens that ran.

What streams is exactly what the plain call returns: the text is re-decoded from all tokens so
far, a tail that could be the start of a stop string (or half a UTF-8 character) is held back,
and the last chunk carries whatever the plain call's own finishing (``_finish``) adds. Several
choices (``n`` > 1) or prompts are generated as one batch, which ``generate`` cannot stream:
those run whole and are then sent as chunks.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria
from transformers.generation.stopping_criteria import StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

if TYPE_CHECKING:
    from hpc_functions.engines.transformers_engine import TransformersEngine, _Sampling

_END = object()


class _TokenQueue(BaseStreamer):
    """Receives ``generate``'s tokens (batch of one); the first ``put`` is the prompt."""

    def __init__(self) -> None:
        self.tokens: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(_END)


class _Cancelled(StoppingCriteria):
    """Stops generation once any of ``events`` is set (checked after every token)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> Any:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)


def stream_chat(
    engine: TransformersEngine, body: dict[str, Any], cancel: threading.Event | None
) -> Iterator[dict[str, Any]]:
    from hpc_functions.engines.transformers_engine import (
        DEFAULT_CHAT_MAX_TOKENS,
        _reject_unsupported,
    )

    engine._require_generative("chat completions")
    _reject_unsupported(body, ("tools", "functions", "logprobs", "top_logprobs", "audio"))
    prompt = engine._render_chat(body.get("messages") or [])
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    params = engine._sampling(body, max_tokens, len(ids), DEFAULT_CHAT_MAX_TOKENS, "messages")
    if params.n != 1:
        return whole_as_chunks(engine.chat_completions(body))
    return _chat_chunks(engine, ids, params, cancel or threading.Event())


def stream_completions(
    engine: TransformersEngine, body: dict[str, Any], cancel: threading.Event | None
) -> Iterator[dict[str, Any]]:
    from hpc_functions.engines.base import EngineError
    from hpc_functions.engines.transformers_engine import (
        DEFAULT_COMPLETION_MAX_TOKENS,
        _reject_unsupported,
    )

    engine._require_generative("completions")
    _reject_unsupported(body, ("logprobs", "echo", "suffix"))
    if body.get("best_of") not in (None, 1, body.get("n") or 1):
        raise EngineError("best_of is not supported by this engine", param="best_of")
    prompts = engine._prompt_ids(body.get("prompt"))
    longest = max(len(p) for p in prompts)
    params = engine._sampling(
        body, body.get("max_tokens"), longest, DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
    )
    if params.n != 1 or len(prompts) != 1:
        return whole_as_chunks(engine.completions(body))
    return _completion_chunks(engine, prompts[0], params, cancel or threading.Event())


def _chat_chunks(
    engine: TransformersEngine, ids: list[int], params: _Sampling, cancel: threading.Event
) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": engine.served_name,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""}, None)
    finish, tokens = "stop", 0
    for piece, done in _pieces(engine, ids, params, cancel):
        if piece:
            yield chunk({"content": piece}, None)
        if done is not None:
            finish, tokens = done
    yield chunk({}, finish)
    yield {**base, "choices": [], "usage": _usage(len(ids), tokens)}


def _completion_chunks(
    engine: TransformersEngine, ids: list[int], params: _Sampling, cancel: threading.Event
) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": engine.served_name,
    }

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    finish, tokens = "stop", 0
    for piece, done in _pieces(engine, ids, params, cancel):
        if piece:
            yield chunk(piece, None)
        if done is not None:
            finish, tokens = done
    yield chunk("", finish)
    yield {**base, "choices": [], "usage": _usage(len(ids), tokens)}


def _pieces(
    engine: TransformersEngine, ids: list[int], params: _Sampling, cancel: threading.Event
) -> Iterator[tuple[str, tuple[str, int] | None]]:
    """Text pieces as tokens arrive; the last carries (finish_reason, completion tokens)."""
    from hpc_functions.engines.transformers_engine import _OpenAISampler

    streamer = _TokenQueue()
    generation_config = GenerationConfig(
        max_new_tokens=params.max_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=engine.eos_ids or None,
        pad_token_id=engine.pad_id,
        stop_strings=params.stop or None,
    )
    banned = [] if engine.pad_id in engine.eos_ids else [engine.pad_id]
    sampler = _OpenAISampler(params, len(ids), banned, engine.device)
    failure: list[BaseException] = []
    # Set when the consumer stops reading (the generator is closed): generation stops too.
    abandoned = threading.Event()

    def generate() -> None:
        try:
            with engine._lock, torch.inference_mode():
                engine.model.generate(
                    input_ids=torch.tensor([ids], device=engine.device),
                    attention_mask=torch.ones(
                        (1, len(ids)), dtype=torch.long, device=engine.device
                    ),
                    generation_config=generation_config,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel, abandoned)]),
                    tokenizer=engine.tokenizer if params.stop else None,
                    streamer=streamer,
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
        finally:
            streamer.end()

    thread = threading.Thread(target=generate, name="generate-stream", daemon=True)
    thread.start()
    hold = max((len(s) for s in params.stop), default=1) - 1
    ends = set(engine.eos_ids) | {engine.pad_id}
    row: list[int] = []
    sent = ""
    try:
        while (token := streamer.tokens.get()) is not _END:
            row.append(token)
            if token in ends:
                continue
            text = engine.tokenizer.decode(row, skip_special_tokens=True)
            assert isinstance(text, str)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                # The stop string is complete: nothing from it on is ever sent.
                text, hold = text[:cut], 0
            safe = text[: len(text) - hold] if hold else text
            safe = safe.rstrip("\ufffd")  # half a character: wait for the rest of it
            if len(safe) > len(sent) and safe.startswith(sent):
                piece, sent = safe[len(sent) :], safe
                yield piece, None
    finally:
        abandoned.set()
        thread.join()
    if failure:
        raise failure[0]
    final = engine._finish(row, params)
    rest = final.text[len(sent) :] if final.text.startswith(sent) else ""
    yield rest, (final.finish_reason, final.completion_tokens)


def whole_as_chunks(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A finished response as the chunk sequence a stream of it would have been."""
    chat = response.get("object") == "chat.completion"
    base = {
        "id": response["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response["created"],
        "model": response["model"],
    }
    for choice in response["choices"]:
        index = choice["index"]
        if chat:
            content = choice["message"].get("content") or ""
            for delta, finish in (
                ({"role": "assistant", "content": content}, None),
                ({}, choice["finish_reason"]),
            ):
                yield {
                    **base,
                    "choices": [
                        {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
        else:
            for text, finish in ((choice.get("text") or "", None), ("", choice["finish_reason"])):
                yield {
                    **base,
                    "choices": [
                        {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                    ],
                }
    yield {**base, "choices": [], "usage": response.get("usage")}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
