"""The pixel operations: RGB uint8 in, RGB uint8 out, whole image.

Each is built from OpenCV calls that run in C (lookup tables, separable filters, colour
transforms) so that a 1024x1024 image takes well under 150 ms on one core
(``bench/classic.py`` measures it). Alpha, masks and the foreground matte are handled by
``pipeline``; these functions only see colour.

``variant`` (0 = canonical) gives the deterministic variations used for ``n > 1`` by the
operations listed in ``operations.VARIABLE``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from retouch.engine.classic.arrays import u8
from retouch.engine.types import Pixels

StageHook = Callable[[Pixels], None]


def _lut(values: np.ndarray) -> Pixels:
    return u8(np.clip(np.rint(values), 0, 255))


_RAMP = np.arange(256, dtype=np.float32)


def _diagonal(rgb: Pixels) -> float:
    return math.hypot(rgb.shape[0], rgb.shape[1])


def _gray3(rgb: Pixels) -> Pixels:
    return u8(cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB))


def grayscale(rgb: Pixels) -> Pixels:
    return _gray3(rgb)


def sepia(rgb: Pixels, amount: float) -> Pixels:
    t = min(1.0, max(0.0, amount))
    tone = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    matrix = (t * tone + (1 - t) * np.eye(3)).astype(np.float32)
    return u8(cv2.transform(rgb, matrix))


def brightness(rgb: Pixels, amount: float) -> Pixels:
    """A gamma curve: brighter mid-tones, black and white stay put."""
    gamma = 0.7**amount
    return u8(cv2.LUT(rgb, _lut(255.0 * (_RAMP / 255.0) ** gamma)))


def contrast(rgb: Pixels, amount: float) -> Pixels:
    k = 1.35**amount
    return u8(cv2.LUT(rgb, _lut(127.5 + (_RAMP - 127.5) * k)))


def saturation(rgb: Pixels, amount: float) -> Pixels:
    k = 1.5**amount
    return u8(cv2.addWeighted(rgb, k, _gray3(rgb), 1.0 - k, 0.0))


def temperature(rgb: Pixels, amount: float) -> Pixels:
    """Warmer (+): more red, less blue; cooler (-): the reverse."""
    a = 0.12 * amount
    table = np.stack([_RAMP * (1 + a), _RAMP * (1 + a / 4), _RAMP * (1 - a)], axis=1)
    return u8(cv2.LUT(rgb, _lut(table).reshape(1, 256, 3)))


def blur(rgb: Pixels, amount: float) -> Pixels:
    sigma = max(0.8, abs(amount) * _diagonal(rgb) / 300.0)
    return u8(cv2.GaussianBlur(rgb, (0, 0), sigma))


def sharpen(rgb: Pixels, amount: float) -> Pixels:
    sigma = max(1.0, _diagonal(rgb) / 800.0)
    k = 0.8 * max(0.1, amount)
    return u8(cv2.addWeighted(rgb, 1.0 + k, cv2.GaussianBlur(rgb, (0, 0), sigma), -k, 0.0))


def pixelate(rgb: Pixels, amount: float, variant: int = 0) -> Pixels:
    h, w = rgb.shape[:2]
    block = max(2, round(max(h, w) / 48.0 * max(0.2, amount) * (1.0 + 0.25 * (variant % 5))))
    small = cv2.resize(rgb, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    return u8(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def invert(rgb: Pixels) -> Pixels:
    return u8(cv2.bitwise_not(rgb))


def flip(image: np.ndarray, axis: str) -> np.ndarray:
    return np.asarray(cv2.flip(image, 0 if axis == "vertical" else 1))


_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    degrees %= 360
    return image if degrees == 0 else np.asarray(cv2.rotate(image, _ROTATIONS[degrees]))


def sketch(
    rgb: Pixels, amount: float, variant: int = 0, on_stage: StageHook | None = None
) -> Pixels:
    """Pencil sketch: colour dodge of the grey image by its blurred negative."""
    gray = u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    if on_stage is not None:
        on_stage(u8(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)))
    sigma = max(2.5, _diagonal(rgb) / 120.0) * max(0.3, amount) * (1.0 + 0.3 * (variant % 4))
    negative_blur = u8(cv2.GaussianBlur(cv2.bitwise_not(gray), (0, 0), sigma))
    if on_stage is not None:
        on_stage(u8(cv2.cvtColor(negative_blur, cv2.COLOR_GRAY2RGB)))
    drawing = cv2.divide(gray, cv2.bitwise_not(negative_blur), scale=256)
    return u8(cv2.cvtColor(drawing, cv2.COLOR_GRAY2RGB))


def cartoon(
    rgb: Pixels, amount: float, variant: int = 0, on_stage: StageHook | None = None
) -> Pixels:
    """Flat colour regions (edge-preserving smoothing + colour quantisation) with ink edges."""
    h, w = rgb.shape[:2]
    scale = min(1.0, 384.0 / max(h, w))
    small = u8(
        cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    )
    for _ in range(2):
        small = u8(cv2.bilateralFilter(small, 7, 40 + 20 * max(0.3, amount), 7))
    smooth = u8(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    if on_stage is not None:
        on_stage(smooth)
    levels = (6, 4, 8, 5, 7)[variant % 5]
    flat = posterize(smooth, levels)
    if on_stage is not None:
        on_stage(flat)
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    block = max(3, (round(_diagonal(rgb) / 120.0) // 2) * 2 + 1)
    edges = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 6
    )
    return u8(cv2.bitwise_and(flat, flat, mask=edges))


def posterize(rgb: Pixels, levels: int = 0, variant: int = 0) -> Pixels:
    n = levels or (4, 3, 5, 6, 2)[variant % 5]
    n = min(max(n, 2), 64)
    step = 256.0 / n
    return u8(cv2.LUT(rgb, _lut(np.floor(_RAMP / step) * (255.0 / (n - 1)))))


def vignette(rgb: Pixels, amount: float) -> Pixels:
    h, w = rgb.shape[:2]
    strength = min(0.95, 0.6 * max(0.1, amount))
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    radius = (x * x + y * y) / 2.0  # 0 at the centre, 1 in the corners
    gain = 1.0 - strength * np.clip((radius - 0.15) / 0.85, 0.0, 1.0) ** 1.5
    return u8(cv2.multiply(rgb, cv2.merge([gain, gain, gain]), dtype=cv2.CV_8U))
