"""Stable Diffusion inpainting end to end: tiny random weights, the SDK over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import SD_OPTIONS, model, serve
from tests.engines.helpers import hole_mask, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]


@pytest.fixture
async def sd(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], sd_weights: Path
) -> Harness:
    return await serve(harness_factory, make_settings, model("sd", "sd-inpaint", sd_weights, SD_OPTIONS))


def _steps(h: Harness) -> int:
    steps: int = h.services.workers["sd"].engine.steps_run
    return steps


async def test_mask_repaints_only_the_edit_area(sd: Harness) -> None:
    source, hole = gradient((64, 64)), (0, 32, 64, 64)
    result = await sd.sdk.images.edit(
        model="sd",
        image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"),
        prompt="grass",
        n=2,
    )
    inside = hole_mask((64, 64), hole)
    outs = [pixels(d.b64_json) for d in result.data]
    assert len(outs) == 2
    assert not np.array_equal(outs[0], outs[1])
    for out in outs:
        assert np.array_equal(out[~inside], source[~inside])
        assert np.abs(out[inside].astype(int) - source[inside].astype(int)).mean() > 5
    assert _steps(sd) == 4  # strength 1.0: every step, once for both images


async def test_without_a_mask_the_whole_image_is_repainted_from_the_input(sd: Harness) -> None:
    result = await sd.sdk.images.edit(model="sd", image=png(), prompt="a painting")
    out = pixels(result.data[0].b64_json)
    assert np.abs(out.astype(int) - gradient((64, 64)).astype(int)).mean() > 5
    assert _steps(sd) == 3  # img2img at strength 0.75 runs 3 of 4 steps


async def test_one_image_only(sd: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sd.sdk.images.edit(model="sd", image=[png(), png()], prompt="x")
    assert "at most 1" in caught.value.message


async def test_streaming_partials_come_from_the_latents(sd: Harness) -> None:
    stream = await sd.sdk.images.edit(
        model="sd", image=png(), prompt="x", stream=True, partial_images=1,
        mask=("mask.png", mask_bytes((64, 64), (0, 0, 32, 64)), "image/png"),
    )  # fmt: skip
    events = [event async for event in stream]
    partials = [pixels(e.b64_json) for e in events if e.type == "image_edit.partial_image"]
    final = [pixels(e.b64_json) for e in events if e.type == "image_edit.completed"]
    assert len(partials) == 1
    assert partials[0].shape == final[0].shape
    assert not np.array_equal(partials[0], final[0])
