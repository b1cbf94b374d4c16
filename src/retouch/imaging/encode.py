"""Encoding of engine output: png, jpeg or webp bytes, metadata-free, bounded effort.

PNG goes through fpng (about 40x faster than Pillow's default deflate on 1024x1024, output
10-100 % larger; see ``limits-and-performance.md`` §4.1); where fpng cannot be imported (no
wheel for the platform), Pillow at compress level 1, the cheapest deflate, takes its place. JPEG and WebP go through Pillow with
``output_compression`` as the quality and WebP at ``method`` 1; PNG level 9, ``optimize`` and
WebP method 6 are never reachable. Pixels are written fresh, so no EXIF/ICC/text chunk of an
input can leak into an output.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from types import ModuleType

import numpy as np
from PIL import Image

from retouch.types import Pixels

log = logging.getLogger(__name__)


def _import_fpng() -> ModuleType | None:
    try:
        import fpng
    except ImportError as exc:  # an optional speed-up: a missing wheel must not stop PNG output
        log.warning("fpng is unavailable (%s); PNG output uses Pillow at compress level 1", exc)
        return None
    module: ModuleType = fpng
    return module


def _pillow_png(pixels: Pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def png_encoder() -> Callable[[Pixels], bytes]:
    """fpng when it imports, else Pillow (compress level 1)."""
    fpng = _import_fpng()
    if fpng is None:
        return _pillow_png
    return lambda pixels: bytes(fpng.from_ndarray(np.ascontiguousarray(pixels)))


encode_png = png_encoder()

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
WEBP_METHOD = 1


def fit(pixels: Pixels, size: tuple[int, int]) -> Pixels:
    """Resize to exactly ``size`` (width, height) if needed."""
    h, w = pixels.shape[:2]
    if (w, h) == size:
        return pixels
    resample = Image.Resampling.BICUBIC if size[0] > w else Image.Resampling.BOX
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def flatten(pixels: Pixels) -> Pixels:
    """Drop the alpha channel by compositing onto white (for jpeg, or opaque output)."""
    if pixels.shape[2] == 3:
        return pixels
    rgb = pixels[:, :, :3].astype(np.uint16)
    alpha = pixels[:, :, 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def encode(pixels: Pixels, fmt: str, quality: int = 100) -> bytes:
    """Encode RGB or RGBA pixels; jpeg drops alpha (callers refuse transparent + jpeg)."""
    if fmt == "png":
        return encode_png(pixels)
    if fmt == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(flatten(pixels)).save(buf, "JPEG", quality=max(1, quality))
        return buf.getvalue()
    if fmt == "webp":
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "WEBP", quality=max(1, quality), method=WEBP_METHOD)
        return buf.getvalue()
    raise ValueError(f"unknown output format {fmt!r}")
