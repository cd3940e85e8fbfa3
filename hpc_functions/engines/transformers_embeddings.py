"""Sentence embeddings for the transformers engine: an encoder, its pooling, OpenAI's answer.

A sentence-transformers directory (``modules.json``: the Transformer module's path, its Pooling
config, a Normalize step) is read as sentence-transformers would run it; a plain encoder directory
gets mean pooling and unit length, as OpenAI returns. ``dimensions`` shortens vectors only for
Matryoshka models (``matryoshka_dimensions`` or ``is_matryoshka`` in ``config.json``).
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from hpc_functions.engines.base import EngineError, EngineUnavailableError
from hpc_functions.engines.transformers_sampling import context_error

# One forward per chunk bounds activation memory for OpenAI's 2048-input maximum.
EMBEDDING_CHUNK = 128
# sentence-transformers' 1_Pooling/config.json keys for the modes implemented in _pool.
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}


class EmbeddingModel:
    """An embedding model loaded from ``path``; forward passes hold the engine's ``lock``."""

    def __init__(
        self, path: Path, served_name: str, device: torch.device, dtype: Any, lock: threading.Lock
    ) -> None:
        self.path = path
        self.served_name = served_name
        self.device = device
        self._lock = lock
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

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
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
            raise context_error(
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
