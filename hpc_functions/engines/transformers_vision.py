"""The transformers engine for a vision-language model: chat with images, through its processor.

Chosen for an engine config with ``"vision": true`` (``engines.warm``); the model directory holds
an image-text-to-text model (LLaVA, Qwen2-VL, Idefics3...) and its processor. Everything but the
images is the text engine's (``TransformersEngine``): template, sampling, constrained decoding,
streaming. Images arrive as data URLs (the gateway made every reference one, chalicelib/images.py)
and are decoded here under a pixel bound, header first: a file the gateway's header check passed
that still does not decode (a truncated JPEG) is a 400 naming its part, never a crash, and the
worker never holds more than ``image_max_pixels`` of one image.

The prompt is rendered with each image part as the processor's image token, in place; the
processor then expands the tokens and makes ``pixel_values``, which ``generate`` gets beside the
ids (``Prepared.model_inputs``, repeated per choice).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import replace
from typing import Any

from hpc_functions.engines.base import EngineError
from hpc_functions.engines.transformers_engine import (
    DEFAULT_CHAT_MAX_TOKENS,
    Prepared,
    TransformersEngine,
)

# The gateway's defaults (Settings.image_*); an engine config may lower or raise them.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.ASCII)


def decode_image(url: Any, param: str, *, max_pixels: int, formats: tuple[str, ...]) -> Any:
    """A data URL's image as an RGB ``PIL.Image``, or an ``EngineError`` (400) naming ``param``:
    size read from the header and bounded before any pixel is decoded."""
    from PIL import Image

    head = _DATA_URL.match(url) if isinstance(url, str) else None
    if head is None:
        raise EngineError(
            f"{param}: images reach the engine as data:image/...;base64 URLs", param=param
        )
    try:
        data = base64.b64decode(url[head.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EngineError(f"{param}: the image is not valid base64", param=param) from exc
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise EngineError(
                    f"{param}: the image is {width}x{height} pixels; at most {max_pixels}"
                    " pixels are allowed",
                    param=param,
                    code="image_too_large",
                )
            return image.convert("RGB")  # decodes: a truncated file fails here
    except EngineError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise EngineError(
            f"{param}: the image has too many pixels ({exc})", param=param, code="image_too_large"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure on client bytes is their 400
        raise EngineError(
            f"{param}: the image could not be decoded ({type(exc).__name__}: {str(exc)[:200]})",
            param=param,
            code="invalid_image",
        ) from exc


class TransformersVisionEngine(TransformersEngine):
    GENERATIVE_SUFFIXES = ("ForConditionalGeneration", "ForCausalLM")

    def __init__(self, config: dict[str, Any]) -> None:
        self.max_pixels = int(config.get("image_max_pixels") or DEFAULT_MAX_PIXELS)
        self.formats = tuple(str(f).upper() for f in config.get("image_formats") or DEFAULT_FORMATS)
        super().__init__(config)

    def _load_generative(self, dtype: Any) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        # transformers leaves AutoProcessor.from_pretrained untyped.
        self.processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            self.path, local_files_only=True
        )
        self.tokenizer = self.processor.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(
            self.path, local_files_only=True, dtype=dtype
        )
        self._adopt(model)

    def prepare_chat(self, body: dict[str, Any]) -> Prepared:
        messages, images = self._with_image_tokens(body.get("messages") or [])
        if not images:
            return super().prepare_chat(body)
        prepared = super().prepare_chat({**body, "messages": messages})
        inputs = self.processor(
            text=prepared.prompt_text, images=images, add_special_tokens=False, return_tensors="pt"
        )
        ids = [int(t) for t in inputs["input_ids"][0]]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        sampling = self._sampling(body, max_tokens, len(ids), DEFAULT_CHAT_MAX_TOKENS, "messages")
        # One row per choice, each with its own copy of the images' pixels.
        pixels = inputs["pixel_values"].to(self.model.dtype).to(self.device)
        model_inputs = {"pixel_values": pixels.repeat(sampling.n, *([1] * (pixels.dim() - 1)))}
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        extra.pop("pixel_values")
        if extra:  # image_sizes, image_grid_thw...: per image, repeated like the pixels
            model_inputs.update(
                {k: v.repeat(sampling.n, *([1] * (v.dim() - 1))) for k, v in extra.items()}
            )
        return replace(prepared, prompts=[ids], sampling=sampling, model_inputs=model_inputs)

    def _with_image_tokens(self, messages: list[Any]) -> tuple[list[Any], list[Any]]:
        """``messages`` with each image part replaced by the image token, in place, and the
        decoded images in order."""
        token = str(self.processor.image_token)
        images: list[Any] = []
        out: list[Any] = []
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                out.append(message)
                continue
            parts = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    param = f"messages[{i}].content[{j}]"
                    image_url = part.get("image_url")
                    url = image_url.get("url") if isinstance(image_url, dict) else None
                    images.append(
                        decode_image(url, param, max_pixels=self.max_pixels, formats=self.formats)
                    )
                    parts.append({"type": "text", "text": token})
                else:
                    parts.append(part)
            out.append({**message, "content": parts})
        return out, images
