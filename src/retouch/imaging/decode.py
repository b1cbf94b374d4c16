"""Safe decoding of uploads: PNG, JPEG and WebP only, cheapest checks first.

``open_upload`` sniffs the magic bytes and reads the header (no pixels decoded), so pixel caps
are enforced before any allocation; ``load_pixels`` then decodes, honours EXIF orientation and
normalises the mode to RGB or RGBA (CMYK, 16-bit, grayscale and palette images included).
Pure functions over bytes; no I/O, no event loop.

These run in a thread pool, so nothing here touches the process-wide warning filters
(``warnings.catch_warnings`` is not thread-safe: two overlapping uses can leave a filter
installed for the whole process). Pillow's bomb warning is caught where a caller turned it into
an error; otherwise our own pixel cap, checked right after the header, refuses the image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from retouch.errors import InvalidImage, InvalidMask, PayloadTooLarge
from retouch.types import Pixels, Upload

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own caps run first; this only backs them up for code paths that skip them.
Image.MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L", "I"}


def sniff(data: bytes) -> str | None:
    """The format from the magic bytes: ``PNG``, ``JPEG``, ``WEBP`` or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if not data:
        return "the file is empty"
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG images are not accepted"
    if head.startswith((b"gif87a", b"gif89a")):
        return "GIF images are not accepted"
    if head.startswith(b"bm"):
        return "BMP images are not accepted"
    if head.startswith((b"ii*\x00", b"mm\x00*")):
        return "TIFF images are not accepted"
    return "the file is not a PNG, JPEG or WebP image"


@dataclass
class OpenedImage:
    """An upload whose header was read and checked; pixels not decoded yet."""

    upload: Upload
    format: str
    image: Image.Image
    width: int
    height: int
    """Size after EXIF orientation."""
    orientation: int = 1
    """The EXIF orientation read from the header; ``load_pixels`` applies exactly this one."""

    @property
    def has_alpha(self) -> bool:
        return self.image.mode in _ALPHA_MODES or "transparency" in self.image.info


def open_upload(upload: Upload, *, max_pixels: int, png_only: bool = False) -> OpenedImage:
    """Sniff, open lazily and check the header: format, frames and pixel count."""
    error = InvalidMask if upload.param == "mask" else InvalidImage
    fmt = sniff(upload.data)
    if fmt is None:
        raise error(
            f"Invalid file '{upload.param}': {_describe(upload.data)}. "
            "Supported formats are PNG, JPEG and WebP.",
            param=upload.param,
            code="invalid_image_file" if error is InvalidImage else "invalid_mask_image_format",
        )
    if png_only and fmt != "PNG":
        raise error(
            f"Invalid file '{upload.param}': it must be a PNG image, got {fmt}.",
            param=upload.param,
            code="invalid_image_format" if error is InvalidImage else "invalid_mask_image_format",
        )
    try:
        image = Image.open(io.BytesIO(upload.data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(
            f"Invalid file '{upload.param}': the image has too many pixels.",
            param=upload.param,
            code="image_too_large",
        ) from None
    except Exception:
        raise error(
            f"Invalid file '{upload.param}': the {fmt} header cannot be read.",
            param=upload.param,
            code="invalid_image_file",
        ) from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise PayloadTooLarge(
            f"Invalid file '{upload.param}': {width}x{height} has more than the "
            f"{max_pixels:,} pixels allowed per image.",
            param=upload.param,
            code="image_too_large",
        )
    # A JPEG with several frames is an MPO (a camera's extra previews): its first frame is the
    # photo. Animated PNG and WebP are refused rather than silently cut to one frame.
    if fmt != "JPEG" and getattr(image, "n_frames", 1) > 1:
        raise error(
            f"Invalid file '{upload.param}': animated images are not accepted.",
            param=upload.param,
            code="invalid_image_file",
        )
    orientation = _orientation(image)
    if orientation in _ROTATED:
        width, height = height, width
    return OpenedImage(upload, fmt, image, width, height, orientation)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation from what the header parse already holds.

    PNG keeps EXIF in an ``eXIf`` chunk that may follow the pixel data; Pillow's ``getexif()``
    would then decode the whole image to find it. Only an ``eXIf`` chunk before the pixels
    (already in ``info``) counts, so the size reported here and the pixels always agree."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return value if value in _TRANSPOSE else 1


def load_pixels(opened: OpenedImage) -> Pixels:
    """Decode fully, apply EXIF orientation, and return RGB or RGBA uint8 pixels."""
    image = opened.image
    try:
        image.load()
        pixels = _to_rgb_or_rgba(image)
    except Exception:
        param = opened.upload.param
        error = InvalidMask if param == "mask" else InvalidImage
        raise error(
            f"Invalid file '{param}': the {opened.format} data is corrupt or truncated.",
            param=param,
            code="invalid_mask_image_format" if param == "mask" else "invalid_image_file",
        ) from None
    transpose = _TRANSPOSE.get(opened.orientation)
    if transpose is None:
        return pixels
    return _transpose(pixels, transpose)


def _transpose(pixels: Pixels, method: Image.Transpose) -> Pixels:
    steps = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
        Image.Transpose.FLIP_TOP_BOTTOM: lambda a: a[::-1],
        Image.Transpose.ROTATE_180: lambda a: a[::-1, ::-1],
        Image.Transpose.ROTATE_90: lambda a: np.rot90(a, 1),  # counter-clockwise
        Image.Transpose.ROTATE_270: lambda a: np.rot90(a, -1),
        Image.Transpose.TRANSPOSE: lambda a: a.transpose(1, 0, 2),
        Image.Transpose.TRANSVERSE: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    }
    return np.ascontiguousarray(steps[method](pixels))


def _to_rgb_or_rgba(image: Image.Image) -> Pixels:
    mode = image.mode
    if mode in _SIXTEEN_BIT_GRAY:
        # 16-bit grayscale: scale 0..65535 to 0..255 (v / 257, rounded). Scaling must not depend
        # on the content: a dark 16-bit image stays dark.
        wide = np.asarray(image).astype(np.uint32)
        gray = ((np.minimum(wide, 65535) + 128) // 257).astype(np.uint8)
        if "transparency" in image.info:
            alpha = np.where(wide == image.info["transparency"], 0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.dstack([gray, gray, gray, alpha]))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "RGBA" or (mode == "RGB" and "transparency" not in image.info):
        return np.asarray(image)
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def mask_pixels(opened: OpenedImage, size: tuple[int, int]) -> Pixels:
    """OpenAI mask (alpha 0 = edit) -> engine mask (255 = edit), checked against ``size``."""
    if (opened.width, opened.height) != size:
        raise InvalidMask(
            f"Invalid mask: its size {opened.width}x{opened.height} does not match the first "
            f"image ({size[0]}x{size[1]}).",
            param="mask",
            code="mask_size_mismatch",
        )
    if not opened.has_alpha:
        raise InvalidMask(
            "Invalid mask image format - mask image missing alpha channel",
            param="mask",
            code="invalid_mask_image_format",
        )
    return alpha_to_mask(load_pixels(opened))


def alpha_to_mask(pixels: Pixels) -> Pixels:
    """Edit mask from an RGBA image's transparency: 255 where alpha is 0."""
    return np.subtract(255, pixels[:, :, 3], dtype=np.uint8)
