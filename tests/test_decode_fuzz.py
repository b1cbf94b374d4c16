"""Property: any bytes given as an image either decode to RGB/RGBA pixels or raise one of our
own errors (a 4xx in OpenAI's envelope) -- never another exception, which would be a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retouch.errors import RetouchError
from retouch.imaging.decode import load_pixels, open_upload
from retouch.service.form import Upload


def _seed(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    channels = 4 if mode == "RGBA" else 3
    image = Image.fromarray(rng.integers(0, 255, (24, 32, channels), dtype=np.uint8), mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


SEEDS = [_seed("PNG"), _seed("PNG", "RGBA"), _seed("JPEG"), _seed("WEBP"), _seed("WEBP", "RGBA")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        if not data:
            break
    return bytes(data)


def _decode(data: bytes, param: str) -> None:
    upload = Upload(param, "x.png", "image/png", data)
    error: RetouchError | None = None
    try:
        pixels = load_pixels(open_upload(upload, max_pixels=4_000_000, png_only=param == "mask"))
    except RetouchError as exc:
        error = exc
    if error is not None:
        assert 400 <= error.status < 500
        assert error.param == param
        return
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3
    assert pixels.shape[2] in (3, 4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_decode_or_fail_cleanly(data: bytes) -> None:
    _decode(data, "image[1]")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_fail_cleanly(data: bytes) -> None:
    _decode(data, "image")


@pytest.mark.parametrize("seed", SEEDS)
def test_seeds_decode(seed: bytes) -> None:
    _decode(seed, "image")
