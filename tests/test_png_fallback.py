"""PNG output without fpng: Pillow at compress level 1 takes over, lossless."""

from __future__ import annotations

import builtins
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from retouch.imaging import encode
from tests.conftest import gradient


def _without_fpng(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "fpng" or name.startswith("fpng."):
            raise ImportError("No module named 'fpng' (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("channels", [3, 4])
def test_pillow_takes_over_when_fpng_does_not_import(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, channels: int
) -> None:
    _without_fpng(monkeypatch)
    encoder = encode.png_encoder()
    assert encoder is encode._pillow_png
    assert "fpng is unavailable" in caplog.text
    pixels = gradient((40, 24))
    if channels == 4:
        pixels = np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)])
    monkeypatch.setattr(encode, "encode_png", encoder)
    data = encode.encode(pixels, "png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_fallback_uses_the_cheapest_deflate(monkeypatch: pytest.MonkeyPatch) -> None:
    saved: dict[str, Any] = {}
    real_save = Image.Image.save

    def spy(self: Image.Image, fp: Any, format: Any = None, **params: Any) -> None:
        saved.update(params, format=format)
        real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", spy)
    encode._pillow_png(gradient((8, 8)))
    assert saved == {"format": "PNG", "compress_level": 1}


def test_fpng_is_used_when_present() -> None:
    pytest.importorskip("fpng")
    assert encode.png_encoder() is not encode._pillow_png
