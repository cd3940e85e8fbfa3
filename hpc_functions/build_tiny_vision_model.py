"""Build the local vision-language model: a tiny LLaVA with random weights from a fixed seed.

``python -m hpc_functions.build_tiny_vision_model OUT_DIR`` writes a Hugging Face model directory
(model, tokenizer and processor) that the transformers engine serves with images
(``transformers_vision``). LLaVA is a standard architecture transformers ships: a CLIP vision
tower, a projector, and the same tiny Llama and WordPiece vocabulary as ``build_tiny_model`` (plus
an ``<image>`` token). A 32x32 image becomes 16 image tokens. Its answers are noise, but the path
is real: the processor resizes and normalises the image, expands ``<image>``, and the vision tower
runs in ``generate``. Built in about a second, and a no-op when OUT_DIR holds the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from hpc_functions.build_tiny_model import (
    CHAT_TEMPLATE,
    MODEL_CONFIG,
    SEED,
    _build_tokenizer,
    _source_tokenizer_file,
    build_agent,
    build_once,
)
from hpc_functions.build_tiny_model import build as build_chat

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 8
# The CLS embedding is dropped ("default" strategy): one token per patch.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "projection_dim": 32,
}


def _stamp(tokenizer_file: Path) -> str:
    import transformers

    recipe = {
        "seed": SEED,
        "text": MODEL_CONFIG,
        "vision": VISION_CONFIG,
        "image_token": IMAGE_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_sha256": hashlib.sha256(tokenizer_file.read_bytes()).hexdigest(),
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _write(staging: Path, tokenizer_file: Path) -> None:
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _build_tokenizer(tokenizer_file)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG).to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()  # type: ignore[arg-type]
    model.save_pretrained(staging, safe_serialization=True)
    # The PIL backend: torchvision is not a dependency of the node.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def build(out_dir: str | Path) -> Path:
    """Build the tiny vision model into ``out_dir`` unless the same recipe is already there."""
    tokenizer_file = _source_tokenizer_file()
    return build_once(out_dir, _stamp(tokenizer_file), lambda d: _write(d, tokenizer_file))


def main(argv: list[str] | None = None) -> int:
    """``OUT_DIR``, ``CHAT_OUT_DIR OUT_DIR`` or ``CHAT_OUT_DIR AGENT_OUT_DIR OUT_DIR``: the tiny
    chat model and tiny-agent first, in the same process (one import of transformers, not three;
    the stack builds all three this way)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2, 3):
        print(
            "usage: python -m hpc_functions.build_tiny_vision_model"
            " [CHAT_OUT_DIR [AGENT_OUT_DIR]] OUT_DIR",
            file=sys.stderr,
        )
        return 2
    if len(args) >= 2:
        print(build_chat(args[0]))
    if len(args) == 3:
        print(build_agent(args[1]))
    print(build(args[-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
