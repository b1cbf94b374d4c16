"""Foreground/background separation without model weights.

1. **Seeding from the borders**: on a small copy (``work_size`` pixels on the long side) the
   outermost pixel ring is marked as certain background and everything else as probable
   foreground; OpenCV's GrabCut then fits colour models to both and cuts along the edges.
   This assumes a subject that does not fill the whole frame edge to edge, which is the
   usual case for product shots and portraits.
2. **Refinement**: the small hard mask is cleaned (small islands removed), blown back up and
   turned into a soft alpha with a guided filter (coefficients computed at a reduced scale and
   upsampled, He & Sun's "fast guided filter"), so the edge follows the full-resolution image.
"""

from __future__ import annotations

import cv2
import numpy as np

from retouch.engine.classic.arrays import u8
from retouch.engine.types import Pixels

WORK_SIZE = 96
"""Long side of the copy GrabCut runs on: its cost grows with the pixel count, and 96 keeps a
1024x1024 matte within the 150 ms budget on one core (``bench/classic.py``)."""
ITERATIONS = 2


def foreground_alpha(
    rgb: Pixels, *, work_size: int = WORK_SIZE, iterations: int = ITERATIONS
) -> Pixels:
    """Alpha (H x W uint8, 255 = foreground) of the main subject of ``rgb``."""
    h, w = rgb.shape[:2]
    scale = min(1.0, work_size / max(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    small = u8(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    hard = _grabcut(small, iterations)
    if not hard.any() or hard.all():
        # GrabCut found no separation (a flat image, or a subject that fills the frame):
        # say so with a fully opaque matte rather than inventing an outline.
        return np.full((h, w), 255, np.uint8)
    return _refine(rgb, hard)


def _grabcut(small: Pixels, iterations: int) -> np.ndarray:
    mask = np.full(small.shape[:2], cv2.GC_PR_FGD, np.uint8)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = cv2.GC_BGD
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(small, mask, (0, 0, 0, 0), bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    return _drop_islands(fg)


def _drop_islands(fg: np.ndarray) -> np.ndarray:
    """Keep foreground components of at least 5 % of the largest one."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 2:
        return fg.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
    return np.isin(labels, keep)


def _refine(rgb: Pixels, hard: np.ndarray, radius_frac: float = 0.012) -> Pixels:
    h, w = rgb.shape[:2]
    guide_scale = min(1.0, 256.0 / max(h, w))
    gs = (max(8, round(w * guide_scale)), max(8, round(h * guide_scale)))
    guide = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), gs, interpolation=cv2.INTER_AREA)
    guide = guide.astype(np.float32) / 255.0
    src = cv2.resize(hard.astype(np.float32), gs, interpolation=cv2.INTER_LINEAR)
    r = max(1, round(max(gs) * radius_frac * 4))
    a, b = _guided_coefficients(guide, src, r, 1e-3)
    a_full = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    b_full = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    full_guide = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    alpha = a_full * full_guide + b_full
    return u8(np.clip(alpha * 255.0 + 0.5, 0, 255))


def _guided_coefficients(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    k = (2 * radius + 1, 2 * radius + 1)
    mean_i = cv2.boxFilter(guide, -1, k)
    mean_p = cv2.boxFilter(src, -1, k)
    cov = cv2.boxFilter(guide * src, -1, k) - mean_i * mean_p
    var = cv2.boxFilter(guide * guide, -1, k) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return cv2.boxFilter(a, -1, k), cv2.boxFilter(b, -1, k)


def extract_foreground(rgb: Pixels) -> Pixels:
    """RGBA: ``rgb`` with the alpha of its main subject (used by the generative engines for
    ``background=transparent``)."""
    return np.dstack([rgb[:, :, :3], foreground_alpha(rgb[:, :, :3])])
