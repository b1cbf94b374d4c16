"""Text rendering for "add the text '…'": Pillow + a font that ships with the package.

The package carries DejaVu Sans Bold (``fonts/``, Bitstream Vera licence): Latin, Greek,
Cyrillic and many symbols, but no Chinese, Japanese or Korean. For those, the engine looks
for a CJK font: the ``font`` engine option (a path), then the usual system locations
(Noto Sans CJK, WenQuanYi, Droid Sans Fallback, PingFang, Microsoft YaHei). Text that no
available font can draw is refused before the job is queued, naming the characters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retouch.engine.classic.operations import Rgb
from retouch.engine.types import Pixels

BUNDLED_FONT = Path(__file__).with_name("fonts") / "DejaVuSans-Bold.ttf"

SYSTEM_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)

_PROBE_SIZE = 24
_MISSING = "\U0010fffd"  # a private-use code point: every font draws its "missing" box


def font_paths(configured: str | None = None) -> list[Path]:
    """The fonts to try, in order: the bundled one, the configured one, system CJK fonts."""
    paths = [BUNDLED_FONT]
    if configured:
        paths.append(Path(configured))
    paths += [Path(p) for p in SYSTEM_CJK_FONTS if os.path.exists(p)]
    return paths


@functools.lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=4096)
def _has_glyph(path: Path, char: str) -> bool:
    if char.isspace():
        return True
    font = _font(path, _PROBE_SIZE)
    drawn, missing = font.getmask(char), font.getmask(_MISSING)
    return drawn.size != missing.size or bytes(drawn) != bytes(missing)


def pick_font(text: str, paths: Sequence[Path]) -> Path | None:
    """The first font that has a glyph for every character of ``text``."""
    for path in paths:
        try:
            if all(_has_glyph(path, c) for c in text):
                return path
        except OSError:  # an unreadable configured font: try the next
            continue
    return None


def missing_characters(text: str, paths: Sequence[Path]) -> str:
    """Characters of ``text`` that no font in ``paths`` can draw ('' when all can)."""
    if pick_font(text, paths) is not None:
        return ""
    missing = []
    for char in dict.fromkeys(text):
        if not any(_safe_has_glyph(p, char) for p in paths):
            missing.append(char)
    return "".join(missing) or text


def _safe_has_glyph(path: Path, char: str) -> bool:
    try:
        return _has_glyph(path, char)
    except OSError:
        return False


def draw_text(
    rgb: Pixels,
    text: str,
    *,
    font_path: Path,
    position: str = "bottom",
    color: Rgb | None = None,
) -> Pixels:
    """``rgb`` with ``text`` written across it: as large as fits in at most three lines
    within 90 % of the width, light letters with a dark outline (or the reverse)."""
    h, w = rgb.shape[:2]
    fill = color or (255, 255, 255)
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    outline = (0, 0, 0) if luma >= 110 else (255, 255, 255)
    size = max(10, h // 8)
    while True:
        font = _font(font_path, size)
        lines = _wrap(text, font, 0.9 * w)
        if (len(lines) <= 3 and _height(lines, font) <= 0.45 * h) or size <= 10:
            break
        size = max(10, int(size * 0.85))
    stroke = max(1, size // 14)
    spacing = size // 5
    block_h = _height(lines, font) + spacing * (len(lines) - 1)
    margin = max(2, h // 25)
    if position == "top":
        top = margin
    elif position == "center":
        top = (h - block_h) // 2
    else:
        top = h - margin - block_h
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    y = top
    for line in lines:
        left, _t, right, bottom = font.getbbox(line, stroke_width=stroke)
        x = (w - (right - left)) // 2 - left
        draw.text((x, y), line, font=font, fill=fill, stroke_width=stroke, stroke_fill=outline)
        y += _line_height(font) + spacing
    return np.asarray(image)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return int(ascent + descent)


def _height(lines: list[str], font: ImageFont.FreeTypeFont) -> int:
    return _line_height(font) * len(lines)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy wrapping at spaces; text without spaces (Chinese) may break anywhere."""
    units = text.split() if " " in text.strip() else list(text.strip())
    joiner = " " if " " in text.strip() else ""
    lines: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}{joiner}{unit}" if current else unit
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = unit
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines or [""]
