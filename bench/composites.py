"""Test images with exact foreground masks, built from scikit-image's sample photos.

Each composite is a sharp subject pasted onto a blurred photo (a shallow depth of field, as in
a product shot or a portrait): scikit-image's logo (its own shape, with the white S-curve cut
out, so the subject has a gap the background shows through), its horse silhouette filled with
a photo's texture, random polygons and discs (some with holes) filled with photo texture. The
mask used to paste is the ground truth, so IoU against it is exact.

Used by ``bench/matting.py`` and by the matting tests (a couple of composites).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from skimage import data

U8 = npt.NDArray[np.uint8]

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "motorcycle",
)


@dataclass(frozen=True)
class Composite:
    name: str
    rgb: U8
    """H x W x 3 uint8."""
    mask: npt.NDArray[np.bool_]
    """True where the pasted subject is."""


def photo(name: str) -> U8:
    if name == "motorcycle":
        return np.ascontiguousarray(data.stereo_motorcycle()[0])
    image = getattr(data, name)()
    return np.ascontiguousarray(image[:, :, :3])


def _cover(image: U8, size: int) -> U8:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    scaled = cv2.resize(
        image, (max(size, round(w * scale)), max(size, round(h * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    )  # fmt: skip
    y0, x0 = (scaled.shape[0] - size) // 2, (scaled.shape[1] - size) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + size, x0 : x0 + size])


def _background(name: str, size: int, sigma: float) -> U8:
    return np.asarray(cv2.GaussianBlur(_cover(photo(name), size), (0, 0), sigma), np.uint8)


def _paste(back: U8, front: U8, mask: npt.NDArray[np.bool_]) -> U8:
    out = back.copy()
    out[mask] = front[mask]
    return out


def _logo_shape() -> tuple[U8, npt.NDArray[np.bool_]]:
    logo = data.logo()[:, :, :3]
    # The logo is a disc on white with a white S-curve through it: both whites are background.
    mask = logo.min(axis=2) < 235
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    return np.ascontiguousarray(logo), mask


def _place(
    shape: npt.NDArray[np.bool_], texture: U8 | None, size: int, frac: float, at: tuple[float, float]
) -> tuple[npt.NDArray[np.bool_], U8 | None]:
    """Scale ``shape`` (and its texture) so its long side is ``frac`` of the frame, centred
    at ``at`` (fractions of the frame)."""
    h, w = shape.shape
    scale = frac * size / max(h, w)
    sw, sh = round(w * scale), round(h * scale)
    small = cv2.resize(shape.astype(np.float32), (sw, sh), interpolation=cv2.INTER_LINEAR) > 0.5
    mask = np.zeros((size, size), bool)
    x0 = int(np.clip(round(at[0] * size - sw / 2), 0, size - sw))
    y0 = int(np.clip(round(at[1] * size - sh / 2), 0, size - sh))
    mask[y0 : y0 + sh, x0 : x0 + sw] = small
    if texture is None:
        return mask, None
    tex = np.zeros((size, size, 3), np.uint8)
    tex[y0 : y0 + sh, x0 : x0 + sw] = cv2.resize(texture, (sw, sh), interpolation=cv2.INTER_AREA)
    return mask, tex


def _polygon(rng: np.random.Generator, size: int, holes: bool) -> npt.NDArray[np.bool_]:
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        n = int(rng.integers(4, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.12, 0.3, n) * size
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    if holes:
        ys, xs = np.nonzero(mask)
        i = int(rng.integers(len(xs)))
        cv2.circle(mask, (int(xs[i]), int(ys[i])), int(size * rng.uniform(0.03, 0.06)), 0, -1)
    return mask > 0


def _discs(rng: np.random.Generator, size: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros((size, size), np.uint8)
    discs = []
    for _ in range(int(rng.integers(2, 4))):
        c = (rng.uniform(0.25, 0.75, 2) * size).astype(int)
        discs.append((int(c[0]), int(c[1]), int(rng.uniform(0.08, 0.2) * size)))
        cv2.circle(mask, discs[-1][:2], discs[-1][2], 1, -1)
    x, y, r = max(discs, key=lambda d: d[2])
    cv2.circle(mask, (x, y), r // 2, 0, -1)  # a ring: its middle must stay background
    return mask > 0


def _textured(rng: np.random.Generator, size: int, avoid: str) -> U8:
    names = [p for p in PHOTOS if p != avoid]
    return _cover(photo(names[int(rng.integers(len(names)))]), size)


def build(size: int = 1024, seed: int = 0, count: int | None = None) -> list[Composite]:
    """The benchmark's composites: logo and horse on several backgrounds, then polygons and
    discs of photo texture, all deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    sigma = size / 160
    out: list[Composite] = []
    logo, logo_mask = _logo_shape()
    horse = ~data.horse()
    for i, back_name in enumerate(("rocket", "coffee", "hubble_deep_field")):
        back = _background(back_name, size, sigma)
        at = (0.5 + 0.1 * (i - 1), 0.5)
        mask, tex = _place(logo_mask, logo, size, 0.55 + 0.1 * i, at)
        assert tex is not None
        out.append(Composite(f"logo on {back_name}", _paste(back, tex, mask), mask))
    for i, (back_name, fill_name) in enumerate(
        (("astronaut", "coffee"), ("retina", "chelsea"), ("colorwheel", "rocket"))
    ):
        back = _background(back_name, size, sigma)
        tex_full = _cover(photo(fill_name), max(horse.shape))
        tex_full = tex_full[: horse.shape[0], : horse.shape[1]]
        mask, tex = _place(horse, tex_full, size, 0.7 - 0.1 * i, (0.5, 0.55))
        assert tex is not None
        out.append(Composite(f"horse of {fill_name} on {back_name}", _paste(back, tex, mask), mask))
    for i, back_name in enumerate(PHOTOS):
        back = _background(back_name, size, sigma)
        if i % 2 == 0:
            mask = _polygon(rng, size, holes=i % 4 == 0)
            kind = "polygon"
        else:
            mask = _discs(rng, size)
            kind = "discs"
        front = _textured(rng, size, back_name)
        out.append(Composite(f"{kind} on {back_name}", _paste(back, front, mask), mask))
    return out if count is None else out[:count]
