"""Fill (inpainting): synthesise the edit area from the rest of the image.

The method, chosen by measurement (``bench/classic.py``, ``docs/classic-engine.md``):

0. **Diffusion** — OpenCV's Navier-Stokes inpainting at full resolution: smooth, fast, good
   on gradients, but it smears structure.
1. **Coarse structure** — OpenCV's frequency-selective reconstruction
   (``cv2.xphoto.inpaint``, ``INPAINT_FSR_FAST``) at a scale where the hole has at most
   ``budget`` pixels. FSR continues edges and smooth shading better than Telea or
   Navier-Stokes, but costs about 0.2 ms per hole pixel, so it runs on a downscaled copy.
   FSR carries structure only about ``REACH`` of its pixels in from the hole's border:
   deeper, its blocks see nothing but its own fill and fade to the surroundings' mean colour,
   so a wide hole across a rocket came out as sky, with the rocket's ends smeared in by the
   seam correction (2) as a faint vertical streak. When the hole is deeper than that, a
   second FSR runs at the coarser scale where it is not, and its fill takes over from the
   first with the distance from the border (``_structure_fill``).
2. **Seamless detail** — the upscaled coarse fill leaves a seam where it meets the real
   pixels. The difference between the image and the coarse fill is interpolated into the hole
   as a membrane (a harmonic function solved coarse to fine), and added back: the fill then
   matches its border exactly and keeps the coarse structure inside.
3. **Blend** — 70 % of (2) and 30 % of (0). The two fail differently (FSR invents edges that
   may be wrong, diffusion has none), and their average is closer to the truth than either:
   measured on scikit-image's photos it raises both SSIM and PSNR inside the hole.

Only the pixels of the edit area change; everything else is copied byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt

from retouch.engine.classic.arrays import f32, u8
from retouch.engine.types import Pixels

FloatImage = npt.NDArray[np.float32]
BoolMask = npt.NDArray[np.bool_]

DEFAULT_BUDGET = 4500
"""Hole pixels given to FSR at the coarse scale: about 1 s of FSR on one core (measured)."""
DIFFUSION_WEIGHT = 0.3
"""Share of the Navier-Stokes fill in the result (0.25-0.5 measured about equally well)."""

REACH = 10
"""Distance into the hole, in FSR's pixels, over which FSR continues the structure that meets
the border (measured: the rocket cut by a 160x90 hole, and random holes, ``bench/fill_holes.py``)."""

DEEP_MIN_RATIO = 2.0
"""The second FSR runs at least this much coarser than the first (its time)."""

_MEMBRANE_KERNEL = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)
_MARGIN = 24
"""Known pixels kept around the hole's bounding box, in coarse pixels (FSR reads
neighbouring blocks; the membrane needs a border)."""


StageHook = Callable[[Pixels], None]


def fill(
    rgb: Pixels,
    hole: BoolMask,
    *,
    budget: int = DEFAULT_BUDGET,
    variant: int = 0,
    on_stage: StageHook | None = None,
) -> Pixels:
    """Return ``rgb`` (H x W x C, uint8) with the ``hole`` pixels synthesised.

    ``variant`` 0 is the canonical fill; other values change the coarse scale a little,
    which gives a different, deterministic fill (for ``n > 1``). ``on_stage`` receives the
    two intermediate whole images as they are computed: the diffusion fill, then the
    structure (FSR) fill before the blend.
    """
    if not hole.any():
        return rgb.copy()
    if hole.all():
        raise ValueError("nothing to fill from: the edit area covers the whole image")
    out = rgb.copy()
    y0, y1, x0, x1 = _crop_box(hole, _MARGIN * max(1.0, _scale(int(hole.sum()), budget)))
    crop, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
    diffusion = _diffusion(crop, crop_hole)
    if on_stage is not None:
        on_stage(_paste(out, crop_hole, diffusion, (y0, x0)))
    scale = _fit_scale(crop_hole, budget) * _variant_factor(variant)
    upscaled = _structure_fill(crop, crop_hole, scale)
    structure = _seamless(crop, crop_hole, upscaled)
    if on_stage is not None:
        on_stage(_paste(out, crop_hole, structure, (y0, x0)))
    w = DIFFUSION_WEIGHT
    blended = u8(cv2.addWeighted(structure, 1.0 - w, diffusion, w, 0.0))
    return _paste(out, crop_hole, blended, (y0, x0))


def _diffusion(crop: Pixels, hole: BoolMask) -> Pixels:
    """Navier-Stokes inpainting (one or three 8-bit channels at a time)."""
    unknown = hole.astype(np.uint8)
    if crop.ndim == 2 or crop.shape[2] in (1, 3):
        return u8(cv2.inpaint(crop, unknown, 3, cv2.INPAINT_NS)).reshape(crop.shape)
    colour = u8(cv2.inpaint(np.ascontiguousarray(crop[:, :, :3]), unknown, 3, cv2.INPAINT_NS))
    rest = [
        u8(cv2.inpaint(np.ascontiguousarray(crop[:, :, c]), unknown, 3, cv2.INPAINT_NS))
        for c in range(3, crop.shape[2])
    ]
    return np.dstack([colour, *rest])


def _scale(hole_pixels: int, budget: int) -> float:
    return max(1.0, math.sqrt(hole_pixels / max(1, budget)))


def _fit_scale(hole: BoolMask, budget: int) -> float:
    """The scale at which the coarse hole (grown by the touching rule) has about ``budget``
    pixels: FSR's time is proportional to that count."""
    scale = _scale(int(hole.sum()), budget)
    if scale == 1.0:
        return scale
    h, w = hole.shape
    size = (max(8, round(w / scale)), max(8, round(h / scale)))
    grown = int(_coarse_hole(hole, size).sum())
    return scale * max(1.0, math.sqrt(grown / budget))


def _variant_factor(variant: int) -> float:
    """Variant 0 is 1.0; others step the scale by 12 % up, deterministically."""
    if variant == 0:
        return 1.0
    return 1.0 + 0.12 * (1 + (variant - 1) % 6)


def _crop_box(hole: BoolMask, margin: float) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(hole.any(axis=1))
    xs = np.flatnonzero(hole.any(axis=0))
    h, w = hole.shape
    m = int(math.ceil(margin))
    return max(0, ys[0] - m), min(h, ys[-1] + 1 + m), max(0, xs[0] - m), min(w, xs[-1] + 1 + m)


def _paste(base: Pixels, hole: BoolMask, values: Pixels, at: tuple[int, int]) -> Pixels:
    out = base.copy()
    y0, x0 = at
    h, w = hole.shape
    region = out[y0 : y0 + h, x0 : x0 + w]
    region[hole] = values[hole]
    return out


def _coarse_fill(crop: Pixels, hole: BoolMask, scale: float) -> Pixels:
    """FSR at 1/scale, upscaled (bicubic) to the crop's size."""
    h, w = hole.shape
    if scale <= 1.0:
        small, small_hole = crop, hole
    else:
        size = (max(8, round(w / scale)), max(8, round(h / scale)))
        small = u8(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
        small_hole = _coarse_hole(hole, size)
    result = _fsr(small, small_hole)
    if result.shape[:2] == (h, w):
        return result
    return _as3(u8(cv2.resize(result, (w, h), interpolation=cv2.INTER_CUBIC)), crop)


def _structure_fill(crop: Pixels, hole: BoolMask, scale: float) -> Pixels:
    """FSR at 1/scale (``_coarse_fill``); where the hole is deeper than FSR reaches at that
    scale, blended towards FSR at the scale where it reaches the middle: the fine fill up to
    half its reach from the border, the coarse one from one and a half reaches on."""
    fine = _coarse_fill(crop, hole, scale)
    depth = f32(cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3))
    deep_scale = float(depth.max()) / REACH
    if deep_scale <= scale:
        return fine
    # FSR's time falls more slowly than its pixel count: at least twice as coarse keeps the
    # second pass to about 0.1-0.7 s at 1024x1024 with a 10 % hole (measured, one core).
    deep_scale = max(deep_scale, DEEP_MIN_RATIO * scale)
    coarse = _coarse_fill(crop, hole, deep_scale)
    reach = REACH * scale
    weight = np.clip((depth - 0.5 * reach) / reach, 0.0, 1.0).astype(np.float32)
    if fine.ndim == 3:
        weight = weight[:, :, None]
    mixed = fine.astype(np.float32) * (1.0 - weight) + coarse.astype(np.float32) * weight
    return u8(np.clip(mixed + 0.5, 0, 255))


def _coarse_hole(hole: BoolMask, size: tuple[int, int]) -> BoolMask:
    """Any coarse pixel that touches the hole is unknown: a partly-hole average would smear
    the removed object into the fill."""
    # Resize a float mask: a uint8 0/1 mask would round a 30 %-hole pixel down to "known".
    small: BoolMask = cv2.resize(f32(hole), size, interpolation=cv2.INTER_AREA) > 0
    if small.all():
        small = cv2.resize(hole.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return small


def _as3(image: npt.NDArray[np.uint8], like: Pixels) -> Pixels:
    return image.reshape(like.shape) if image.ndim != like.ndim else image


def _fsr(image: Pixels, hole: BoolMask) -> Pixels:
    """Frequency-selective reconstruction; xphoto wants 255 where pixels are *known*."""
    known = np.where(hole, 0, 255).astype(np.uint8)
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels in (1, 3):
        dst = np.zeros_like(image)
        cv2.xphoto.inpaint(image, known, dst, cv2.xphoto.INPAINT_FSR_FAST)
        return dst
    # FSR takes one or three channels: fill colour and the rest (alpha) separately.
    colour = _fsr(np.ascontiguousarray(image[:, :, :3]), hole)
    rest = [_fsr(np.ascontiguousarray(image[:, :, c]), hole) for c in range(3, channels)]
    return np.dstack([colour, *rest])


def _seamless(crop: Pixels, hole: BoolMask, upscaled: Pixels) -> Pixels:
    """Add the membrane interpolation of (image - coarse fill) so the seam disappears."""
    residual = crop.astype(np.float32) - upscaled.astype(np.float32)
    if residual.ndim == 2:
        residual = residual[:, :, None]
    residual[hole] = 0.0
    correction = membrane(residual, hole)
    out = upscaled.astype(np.float32).reshape(correction.shape) + correction
    return u8(np.clip(out + 0.5, 0, 255)).reshape(crop.shape)


def membrane(values: FloatImage, hole: BoolMask, iterations: int = 24) -> FloatImage:
    """The harmonic (Laplace) interpolation of ``values`` into ``hole``, approximately.

    Cascadic multigrid: solve on a half-size grid built from the known pixels, upsample as
    the starting guess, then a few Jacobi sweeps at this level (each a 3x3 filter in C).
    """
    h, w = hole.shape
    if not hole.any():
        return values
    if min(h, w) <= 8:
        start = values.copy()
        start[hole] = values[~hole].mean(axis=0) if (~hole).any() else 0.0
        return _jacobi(start, values, hole, 4 * max(h, w))
    known = f32(~hole)
    half = ((w + 1) // 2, (h + 1) // 2)
    weight = f32(cv2.resize(known, half, interpolation=cv2.INTER_AREA))
    summed = f32(cv2.resize(values * known[:, :, None], half, interpolation=cv2.INTER_AREA))
    summed = summed.reshape(half[1], half[0], values.shape[2])
    coarse_hole = weight < 1e-3
    coarse_values = np.where(
        coarse_hole[:, :, None], 0.0, summed / np.maximum(weight, 1e-6)[:, :, None]
    ).astype(np.float32)
    coarse = membrane(coarse_values, coarse_hole, iterations)
    guess = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).reshape(values.shape)
    start = np.where(hole[:, :, None], guess, values).astype(np.float32)
    return _jacobi(start, values, hole, iterations)


def _jacobi(x: FloatImage, fixed: FloatImage, hole: BoolMask, iterations: int) -> FloatImage:
    keep = (~hole).astype(np.uint8)
    for _ in range(iterations):
        x = f32(cv2.filter2D(x, -1, _MEMBRANE_KERNEL, borderType=cv2.BORDER_REPLICATE)).reshape(
            fixed.shape
        )
        cv2.copyTo(fixed, keep, x)  # the known pixels are the boundary condition
    return x
