"""Qwen-Image-Edit end to end: tiny random weights (processor folder included), the SDK over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import QWEN_OPTIONS, model, serve
from tests.engines.helpers import hole_mask, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch, pytest.mark.usefixtures("small_qwen_references")]


@pytest.fixture
async def qwen(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], qwen_weights: Path
) -> Harness:
    return await serve(
        harness_factory, make_settings, model("qwen", "qwen-image-edit", qwen_weights, QWEN_OPTIONS)
    )


def _steps(h: Harness) -> int:
    steps: int = h.services.workers["qwen"].engine.steps_run
    return steps


async def test_edit_and_multi_image(qwen: Harness) -> None:
    one = await qwen.sdk.images.edit(model="qwen", image=png(), prompt="make it blue")
    two = await qwen.sdk.images.edit(model="qwen", image=[png(), png(shift=30)], prompt="make it blue")
    a, b = pixels(one.data[0].b64_json), pixels(two.data[0].b64_json)
    assert a.shape == b.shape == (64, 64, 3)
    assert not np.array_equal(a, b)  # the second reference reached the model
    assert _steps(qwen) == 4  # 2 steps each (options.steps)


async def test_four_images_exceed_the_family_limit(qwen: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await qwen.sdk.images.edit(model="qwen", image=[png()] * 4, prompt="x")
    assert "at most 3" in caught.value.message


async def test_mask_keeps_outside_pixels_and_takes_one_image(qwen: Harness) -> None:
    source, hole = gradient((64, 64)), (8, 8, 40, 56)
    result = await qwen.sdk.images.edit(
        model="qwen",
        image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"),
        prompt="a cat",
        n=2,
    )
    inside = hole_mask((64, 64), hole)
    assert len(result.data) == 2
    for d in result.data:
        out = pixels(d.b64_json)
        assert np.array_equal(out[~inside], source[~inside])
        assert np.abs(out[inside].astype(int) - source[inside].astype(int)).mean() > 5
    with pytest.raises(openai.BadRequestError) as caught:
        await qwen.sdk.images.edit(
            model="qwen", image=[png(), png()], prompt="a cat",
            mask=("mask.png", mask_bytes((64, 64), hole), "image/png"),
        )  # fmt: skip
    assert caught.value.code == "too_many_images"
    assert "takes 1 image with a mask" in caught.value.message


async def test_other_sizes_are_resized_to_the_request(qwen: Harness) -> None:
    result = await qwen.sdk.images.edit(model="qwen", image=png(), prompt="x", size="80x48")  # type: ignore[arg-type]
    assert pixels(result.data[0].b64_json).shape == (48, 80, 3)


async def test_streaming_partial_images(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], qwen_weights: Path
) -> None:
    h = await serve(
        harness_factory, make_settings,
        model("qwen", "qwen-image-edit", qwen_weights, {**QWEN_OPTIONS, "steps": 4}),
    )  # fmt: skip
    stream = await h.sdk.images.edit(model="qwen", image=png(), prompt="x", stream=True, partial_images=2)
    events = [event async for event in stream]
    partials = [pixels(e.b64_json) for e in events if e.type == "image_edit.partial_image"]
    final = [pixels(e.b64_json) for e in events if e.type == "image_edit.completed"]
    assert len(partials) == 2  # 4 steps, 2 partials: after steps 1 and 3 (round(4/3), round(8/3))
    assert len(final) == 1
    assert all(not np.array_equal(p, final[0]) for p in partials)
