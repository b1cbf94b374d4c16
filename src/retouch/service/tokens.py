"""Usage arithmetic, as OpenAI reports it (``openai-images-edit-contract.md`` §9).

* text tokens: the prompt in the o200k_base encoding (shipped inside the ``bpe-openai`` wheel,
  never fetched at run time);
* input image tokens: the gpt-image-1 tile rule, summed over the input images (the mask is not
  billed);
* output tokens: the quality x size table for the three fixed sizes, the community gpt-image-2
  formula for that family, and the table's square value scaled by pixel count for other sizes
  of retouch's own model names; plus 100 per partial image actually sent.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

from retouch.families import FAMILIES, ApiFamily

_TABLE = {
    "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
    "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
    "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
}
PARTIAL_IMAGE_TOKENS = 100
BEYOND_HIGH = {"xhigh": 1.5, "max": 2.0}
"""``xhigh`` / ``max`` (2.5 families) have no published token counts: retouch bills them as
``high`` scaled like the engines' steps (1.5x and 2x), in the table and in the gpt-image-2
formula's quality factor."""


@functools.cache
def _encoding() -> Any:
    import bpe_openai

    with warnings.catch_warnings():  # its data loader uses importlib.resources' legacy API
        warnings.simplefilter("ignore", DeprecationWarning)
        return bpe_openai.get_encoding("o200k_base")


def load_tokenizer() -> None:
    """Load the o200k_base table ahead of the first request (about 0.1 s)."""
    _encoding()


def text_tokens(prompt: str) -> int:
    return len(_encoding().encode(prompt))


def input_image_tokens(width: int, height: int, fidelity: str = "low") -> int:
    k = min(1.0, 2048 / max(width, height))
    w, h = round(width * k), round(height * k)
    if min(w, h) > 512:
        k = 512 / min(w, h)
        w, h = round(w * k), round(h * k)
    tokens = 65 + 129 * math.ceil(w / 512) * math.ceil(h / 512)
    if fidelity == "high":
        tokens += 4160 if w == h else 6240
    return tokens


def gpt_image_2_output_tokens(quality: str, width: int, height: int) -> int:
    f = {"low": 16, "medium": 48, "high": 96, "xhigh": 144, "max": 192}[quality]
    long_side, short_side = max(width, height), min(width, height)
    s = (2 * f * short_side + long_side) // (2 * long_side)
    return -(-f * s * (2_000_000 + width * height) // 4_000_000)


def output_image_tokens(family: ApiFamily, quality: str, width: int, height: int) -> int:
    if FAMILIES[family].usage == "gpt-image-2":
        return gpt_image_2_output_tokens(quality, width, height)
    factor = BEYOND_HIGH.get(quality, 1.0)
    table = _TABLE["high" if quality in BEYOND_HIGH else quality]
    if (width, height) in table:
        return round(table[(width, height)] * factor)
    return max(1, round(table[(1024, 1024)] * factor * width * height / (1024 * 1024)))


@dataclass(frozen=True)
class Usage:
    text_tokens: int
    image_tokens: int
    output_tokens: int

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def wire(self) -> dict[str, object]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "text_tokens": self.text_tokens,
                "image_tokens": self.image_tokens,
            },
            "output_tokens": self.output_tokens,
            # the newest SDKs parse it; every output token of an image model is an image token
            "output_tokens_details": {"image_tokens": self.output_tokens, "text_tokens": 0},
            "total_tokens": self.total_tokens,
        }


def compute_usage(
    *,
    family: ApiFamily,
    prompt: str,
    input_sizes: list[tuple[int, int]],
    fidelity: str,
    quality: str,
    size: tuple[int, int],
    images_out: int,
    partials_sent: int,
) -> Usage:
    image_in = sum(input_image_tokens(w, h, fidelity) for w, h in input_sizes)
    out = images_out * output_image_tokens(family, quality, *size)
    return Usage(text_tokens(prompt), image_in, out + PARTIAL_IMAGE_TOKENS * partials_sent)
