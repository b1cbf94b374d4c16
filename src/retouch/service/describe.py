"""What a request name accepts, as data: the ``retouch`` field of ``/v1/models`` entries.

The playground (and any other client) reads it to offer only the values a model's family
takes and to explain a disallowed combination before sending. It is derived from the same
tables ``params.py`` validates with, so the page never carries a copy of the rules.
"""

from __future__ import annotations

from typing import Any

from retouch.config import ApiFamily, Limits
from retouch.engine.types import EngineInfo
from retouch.service.params import (
    ALLOWED_FIELDS,
    DALL_E_2_SIZES,
    FIXED_SIZES,
    GPT2_MAX_EDGE,
    GPT2_MAX_PIXELS,
    GPT2_MIN_PIXELS,
    NOT_IMPLEMENTED,
)


def _names(sizes: tuple[tuple[int, int], ...]) -> list[str]:
    return [f"{w}x{h}" for w, h in sizes]


def model_capabilities(
    name: str, family: ApiFamily, info: EngineInfo, limits: Limits
) -> dict[str, Any]:
    """The parameters and values the request name ``name`` (of ``family``, served by an engine
    described by ``info``) accepts on ``/v1/images/edits``."""
    fields = ALLOWED_FIELDS[family]
    if family == "dall-e-2":
        free: dict[str, int | None] | None
        sizes, free = _names(DALL_E_2_SIZES), None
    elif family == "gpt-image":
        sizes, free = ["auto", *_names(FIXED_SIZES)], None
    elif family == "gpt-image-2":
        sizes = ["auto", *_names(FIXED_SIZES)]
        free = {"multiple": 16, "min_pixels": GPT2_MIN_PIXELS, "max_pixels": GPT2_MAX_PIXELS,
                "max_edge": GPT2_MAX_EDGE, "max_aspect": 3}  # fmt: skip
    else:
        sizes = ["auto", *_names(FIXED_SIZES)]
        free = {"multiple": 1, "min_pixels": 1, "max_pixels": limits.max_output_pixels,
                "max_edge": 16384, "max_aspect": None}  # fmt: skip
    gpt = family != "dall-e-2"
    backgrounds = ["auto", "opaque"] + (["transparent"] if info.supports_transparency else [])
    if "input_fidelity" not in fields:
        fidelity: list[str] = []
    else:
        fidelity = ["low"] if name == "gpt-image-1-mini" else ["low", "high"]
    return {
        "family": family,
        "engine": info.name,
        "params": sorted(fields),
        "edits": True,
        "generations": info.generative,
        "max_images": 1 if family == "dall-e-2" else min(info.max_images, limits.max_images),
        "square_png_only": family == "dall-e-2",
        "max_prompt": 1000 if family == "dall-e-2" else 32000,
        "mask": info.supports_mask,
        "markup": "markup" not in NOT_IMPLEMENTED,
        "n_max": 10,
        "sizes": sizes,
        "free_size": free,
        "qualities": ["auto", "low", "medium", "high"] if gpt else ["auto", "standard"],
        "output_formats": ["png", "jpeg", "webp"] if gpt else [],
        "compression_formats": ["jpeg", "webp"] if gpt else [],
        "backgrounds": backgrounds if gpt else [],
        "transparent_formats": ["png", "webp"] if gpt else [],
        "input_fidelity": fidelity,
        "stream": "stream" in fields,
        "partial_images_max": 3 if "partial_images" in fields else 0,
        "response_formats": ["url", "b64_json"] if family == "dall-e-2" else ["b64_json"],
    }
