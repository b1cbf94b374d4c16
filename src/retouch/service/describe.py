"""What a request name accepts, as data: the ``retouch`` field of ``/v1/models`` entries.

The playground (and any other client) reads it to offer only the values a model's family
takes and to explain a disallowed combination before sending. It is derived from the same
tables ``params.py`` validates with, so the page never carries a copy of the rules.
"""

from __future__ import annotations

from typing import Any

from retouch.config import Limits
from retouch.engine.types import EngineInfo
from retouch.families import FAMILIES, ApiFamily
from retouch.service.params import (
    DALL_E_2_SIZES,
    FIXED_SIZES,
    GPT2_MAX_EDGE,
    GPT2_MAX_PIXELS,
    GPT2_MIN_PIXELS,
    allowed_fields,
)


def _names(sizes: tuple[tuple[int, int], ...]) -> list[str]:
    return [f"{w}x{h}" for w, h in sizes]


def model_capabilities(
    name: str, family: ApiFamily, info: EngineInfo, limits: Limits
) -> dict[str, Any]:
    """The parameters and values the request name ``name`` (of ``family``, served by an engine
    described by ``info``) accepts on ``/v1/images/edits`` (``generations``: whether the
    engine also serves ``/v1/images/generations``)."""
    rules = FAMILIES[family]
    fields = allowed_fields(rules, "edit")
    free: dict[str, int | None] | None
    if rules.sizes == "dall-e-2":
        sizes, free = _names(DALL_E_2_SIZES), None
    elif rules.sizes == "fixed":
        sizes, free = ["auto", *_names(FIXED_SIZES)], None
    elif rules.sizes == "free":
        sizes = ["auto", *_names(FIXED_SIZES)]
        free = {"multiple": 16, "min_pixels": GPT2_MIN_PIXELS, "max_pixels": GPT2_MAX_PIXELS,
                "max_edge": GPT2_MAX_EDGE, "max_aspect": 3}  # fmt: skip
    else:
        sizes = ["auto", *_names(FIXED_SIZES)]
        free = {"multiple": 1, "min_pixels": 1, "max_pixels": limits.max_output_pixels,
                "max_edge": 16384, "max_aspect": None}  # fmt: skip
    gpt = rules.gpt_options
    backgrounds = ["auto", "opaque"] + (["transparent"] if info.supports_transparency else [])
    if not rules.input_fidelity:
        fidelity: list[str] = []
    else:
        fidelity = ["low"] if name.startswith("gpt-image-1-mini") else ["low", "high"]
    # only what the engine can write (gif / svg pass validation, then the engine refuses them)
    formats = [f for f in rules.output_formats if f in info.output_formats] if gpt else []
    return {
        "family": family,
        "engine": info.name,
        # what the engine says of itself (classic: which segmenter and fill are active)
        "description": info.description,
        "params": sorted(fields),
        "edits": True,
        "generations": info.text_to_image is not None,
        "max_images": 1 if family == "dall-e-2" else min(info.max_images, limits.max_images),
        "square_png_only": family == "dall-e-2",
        "max_prompt": rules.max_prompt,
        "mask": info.supports_mask,
        "markup": rules.markup,
        "complexity": rules.complexity and info.complexity is not None,
        "n_max": 10,
        "sizes": sizes,
        "free_size": free,
        "qualities": ["auto", *rules.qualities],
        "output_formats": formats,
        "compression_formats": ["jpeg", "webp"] if gpt else [],
        "backgrounds": backgrounds if gpt else [],
        "transparent_formats": ["png", "webp"] if gpt else [],
        "input_fidelity": fidelity,
        "stream": "stream" in fields,
        "partial_images_max": 3 if "partial_images" in fields else 0,
        "response_formats": ["b64_json"] if rules.url == "setting" else ["url", "b64_json"],
    }
