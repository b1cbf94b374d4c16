"""What the prompt parser produces: a list of ``Op`` values, one per instruction, in prompt order.

Kept apart from the grammar so that the pixel code and the tests can build ``Op`` values
without parsing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

OpName = Literal[
    "grayscale",
    "sepia",
    "brightness",
    "contrast",
    "saturation",
    "temperature",
    "blur",
    "sharpen",
    "pixelate",
    "invert",
    "flip",
    "rotate",
    "sketch",
    "cartoon",
    "posterize",
    "vignette",
    "crop_subject",
    "text",
    "fill",
    "remove_background",
    "background_color",
    "background_image",
    "blur_background",
]

Rgb = tuple[int, int, int]

GEOMETRIC: frozenset[OpName] = frozenset({"rotate", "crop_subject"})
"""Operations that change the picture's frame; they cannot be limited to a mask."""

BACKGROUND: frozenset[OpName] = frozenset(
    {"remove_background", "background_color", "background_image", "blur_background", "crop_subject"}
)
"""Operations that need the foreground/background separation."""

VARIABLE: frozenset[OpName] = frozenset({"fill", "sketch", "cartoon", "posterize", "pixelate"})
"""Operations whose ``n > 1`` outputs are distinct variations (the others repeat)."""


@dataclass(frozen=True)
class Op:
    name: OpName
    amount: float = 1.0
    """Signed strength: +1 the usual step up (brighter, more contrast, warmer), -1 the usual
    step down; modifiers such as "slightly" or "much" scale it."""
    degrees: int = 0
    """``rotate``: clockwise degrees (90, 180, 270)."""
    levels: int = 0
    """``posterize``: levels per channel (0 = default)."""
    axis: Literal["", "horizontal", "vertical"] = ""
    """``flip``: the mirror axis."""
    position: Literal["", "top", "center", "bottom"] = ""
    """``text``: where the text goes (default bottom)."""
    color: Rgb | None = None
    """``background_color``: the new background; ``text``: the letter colour."""
    text: str = ""
    """``text``: the words to render."""
    image: int = 0
    """``background_image``: index of the input image used as background (1 = the second)."""
    subject: str = ""
    """``fill``: what the prompt said to remove (for logs only; the mask says where)."""

    def scaled(self, factor: float) -> Op:
        return replace(self, amount=self.amount * factor)
