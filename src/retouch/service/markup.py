"""``markup`` (gpt-image-2.5 and later): a transparent PNG, the size of the first image, whose
strokes (circles, arrows, scribbles) show where to edit. How an engine takes it is its
``EngineInfo.markup``:

* ``mask`` (engines that take a mask: classic, SD inpainting): the stroke pixels (alpha > 0,
  anti-aliased edges included) and every area a stroke encloses become the edit area, exactly
  as if that area had been sent as a mask; outside it the output pixels are the input's, byte
  for byte. A stroke that runs into the image border closes an area with the border. An open
  stroke (an arrow, a tick) marks only the pixels it covers.
* ``hint`` (instruction-following engines: FLUX.2-klein, Qwen-Image-Edit): the markup is drawn
  onto the first image (alpha compositing), which the model then reads along with the prompt.
"""

from __future__ import annotations

import cv2
import numpy as np

from retouch.engine.types import Pixels
from retouch.errors import InvalidImage


def check_markup(markup: Pixels, first_size: tuple[int, int]) -> None:
    """400s for a markup that cannot guide an edit."""
    h, w = markup.shape[:2]
    if (w, h) != first_size:
        raise InvalidImage(
            f"Invalid 'markup': its size {w}x{h} does not match the first image "
            f"({first_size[0]}x{first_size[1]}).",
            param="markup",
            code="markup_size_mismatch",
        )
    if markup.shape[2] != 4:
        raise InvalidImage(
            "Invalid 'markup': it must be a transparent PNG (with an alpha channel) whose "
            "strokes show where to edit.",
            param="markup",
        )
    if not bool(markup[:, :, 3].any()):
        raise InvalidImage(
            "Invalid 'markup': it is fully transparent, so it marks nothing.", param="markup"
        )


def markup_edit_area(markup: Pixels) -> Pixels:
    """The engine mask (255 = edit) of a markup: its strokes and the areas they enclose."""
    strokes = np.where(markup[:, :, 3] > 0, 255, 0).astype(np.uint8)
    contours, _ = cv2.findContours(strokes, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    area = strokes.copy()
    cv2.drawContours(area, contours, -1, 255, thickness=cv2.FILLED)
    return area


def markup_hint(first: Pixels, markup: Pixels) -> Pixels:
    """The first image with the markup drawn over it (its own alpha, if any, kept)."""
    alpha = markup[:, :, 3:4].astype(np.uint32)
    base = first[:, :, :3].astype(np.uint32)
    drawn = (markup[:, :, :3].astype(np.uint32) * alpha + base * (255 - alpha) + 127) // 255
    out = drawn.astype(np.uint8)
    if first.shape[2] == 4:
        out = np.concatenate([out, first[:, :, 3:4]], axis=2)
    return np.ascontiguousarray(out)
