"""Small helpers shared by the engine test modules."""

from __future__ import annotations

import numpy as np

from tests.conftest import decode_b64, encode_image, gradient


def pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_b64(b64).convert("RGB"))


def png(size: tuple[int, int] = (64, 64), shift: int = 0) -> tuple[str, bytes, str]:
    return ("in.png", encode_image(np.roll(gradient(size), shift, axis=1)), "image/png")


def hole_mask(size: tuple[int, int], hole: tuple[int, int, int, int]) -> np.ndarray:
    """True inside ``hole`` (x0, y0, x1, y1): the edit area of ``tests.conftest.mask_bytes``."""
    inside = np.zeros((size[1], size[0]), bool)
    inside[hole[1] : hole[3], hole[0] : hole[2]] = True
    return inside
