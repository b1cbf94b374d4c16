"""Shared pieces of the classic-engine tests: test pictures and an SDK call that returns pixels."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import Harness, encode_image

SIZE = 96


def scene(size: int = SIZE) -> np.ndarray:
    """A product-shot-like picture: a shaded orange disc on a textured blue-grey backdrop."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    backdrop = np.stack(
        [90 + 40 * x / size, 110 + 30 * y / size, 150 + 20 * (x + y) / size], axis=2
    )
    backdrop += rng.normal(0, 6, backdrop.shape)
    c = size / 2
    r = np.hypot(x - c, y - c)
    disc = r < size * 0.28
    shade = (1.0 - 0.4 * (r / (size * 0.28)))[..., None]
    subject = np.array([235, 120, 40], np.float32) * shade
    image = np.where(disc[..., None], subject, backdrop)
    return np.clip(image, 0, 255).astype(np.uint8)


def subject_mask(size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.hypot(x - size / 2, y - size / 2) < size * 0.28


def photo(side: int = 128) -> np.ndarray:
    """A real photograph (scikit-image's cat picture), cropped square and scaled down."""
    from skimage import data

    cat = data.chelsea()
    h, w = cat.shape[:2]
    square = cat[:, (w - h) // 2 : (w - h) // 2 + h]
    return np.asarray(Image.fromarray(square).resize((side, side), Image.Resampling.LANCZOS))


def openai_mask(hole: np.ndarray) -> bytes:
    """An OpenAI mask: alpha 0 (editable) where ``hole`` is True, 255 elsewhere."""
    rgba = np.zeros((*hole.shape, 4), np.uint8)
    rgba[..., 3] = np.where(hole, 0, 255)
    return encode_image(rgba)


def pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


async def edit(h: Harness, prompt: str, image: np.ndarray, **kwargs: Any) -> np.ndarray:
    """One edit through the official SDK; the first output image as an array."""
    result = await edit_all(h, prompt, image, **kwargs)
    return result[0]


async def edit_all(
    h: Harness, prompt: str, image: np.ndarray | list[np.ndarray], **kwargs: Any
) -> list[np.ndarray]:
    images = image if isinstance(image, list) else [image]
    files = [(f"in{i}.png", encode_image(img), "image/png") for i, img in enumerate(images)]
    if "mask" in kwargs and isinstance(kwargs["mask"], np.ndarray):
        kwargs["mask"] = ("mask.png", openai_mask(kwargs["mask"]), "image/png")
    kwargs.setdefault("model", "classic")
    result = await h.sdk.images.edit(
        image=files if len(files) > 1 else files[0], prompt=prompt, **kwargs
    )
    assert result.data is not None
    return [pixels(d.b64_json) for d in result.data]
