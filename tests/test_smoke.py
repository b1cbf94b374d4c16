from __future__ import annotations

import pytest

from tests.conftest import Harness, decode_b64, encode_image, gradient

pytestmark = pytest.mark.anyio


async def test_one_image_b64(echo: Harness) -> None:
    src = encode_image(gradient((64, 48)))
    result = await echo.sdk.images.edit(model="echo", image=("a.png", src, "image/png"), prompt="x")
    assert result.size == "64x48"
    img = decode_b64(result.data[0].b64_json)
    assert img.size == (64, 48)
    assert result.usage is not None
    assert result.usage.total_tokens > 0
