"""Generations and the newest parameters on the generative engines: tiny random-weight
pipelines loaded through the production path, the official SDK's ``images.generate`` (plain
and streaming) over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openai
import pytest

from retouch.config import Settings
from tests.conftest import Harness, encode_image, gradient
from tests.engines.conftest import KLEIN_OPTIONS, SD_OPTIONS, model, serve
from tests.engines.helpers import pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]


@pytest.fixture
async def klein(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path
) -> Harness:
    return await serve(
        harness_factory, make_settings,
        model("klein", "flux2-klein", klein_weights, KLEIN_OPTIONS), default_model="klein",
    )  # fmt: skip


@pytest.fixture
async def sd(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], sd_weights: Path
) -> Harness:
    return await serve(
        harness_factory, make_settings, model("sd", "sd-inpaint", sd_weights, SD_OPTIONS),
        default_model="sd",
    )  # fmt: skip


def _engine(h: Harness, name: str) -> Any:
    return h.services.workers[name].engine


async def test_klein_generates_from_text(klein: Harness) -> None:
    result = await klein.sdk.images.generate(model="gpt-image-1.5", prompt="a red boat", n=2,
                                             size="1024x1024", quality="low")  # fmt: skip
    outs = [pixels(d.b64_json) for d in result.data or []]
    assert len(outs) == 2
    assert outs[0].shape == (1024, 1024, 3)
    assert not np.array_equal(outs[0], outs[1])  # two seeds, two images
    assert outs[0].std() > 1  # generated, not the blank canvas
    assert _engine(klein, "klein").steps_run == 2  # quality low = 2 steps, both images at once
    other = await klein.sdk.images.generate(model="klein", prompt="a green field", size="64x64")
    again = await klein.sdk.images.generate(model="klein", prompt="a green field", size="64x64")
    first = await klein.sdk.images.generate(model="klein", prompt="a red boat", size="64x64")
    assert np.array_equal(pixels(other.data[0].b64_json), pixels(again.data[0].b64_json))  # type: ignore[index]
    assert not np.array_equal(pixels(other.data[0].b64_json), pixels(first.data[0].b64_json))  # type: ignore[index]


async def test_klein_streams_generations(klein: Harness) -> None:
    stream = await klein.sdk.images.generate(
        model="klein", prompt="a red boat", size="64x64", stream=True, partial_images=1
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    partial, final = pixels(events[0].b64_json), pixels(events[1].b64_json)
    assert partial.shape == final.shape == (64, 64, 3)
    assert not np.array_equal(partial, final)
    assert events[1].usage.output_tokens > 100  # type: ignore[union-attr]


async def test_sd_generates_with_the_whole_canvas_masked(sd: Harness) -> None:
    result = await sd.sdk.images.generate(model="sd", prompt="a house", size="64x64")
    out = pixels(result.data[0].b64_json)  # type: ignore[index]
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - 127).mean() > 5  # nothing of the grey canvas left
    assert _engine(sd, "sd").steps_run == 4  # strength 1.0: every step
    stream = await sd.sdk.images.generate(model="sd", prompt="a house", size="64x64",
                                          stream=True, partial_images=1)  # fmt: skip
    kinds = [e.type async for e in stream]
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]


async def test_quality_max_runs_more_steps(klein: Harness) -> None:
    await klein.sdk.images.edit(model="klein", image=png(), prompt="p", quality="max")
    assert _engine(klein, "klein").steps_run == 8  # klein high = 4 steps, max = 2x
    # 2.5 families keep inputs at high fidelity: strength 0.75 runs the last 6 of 8 steps
    await klein.sdk.images.edit(model="gpt-image-2.5-flare", image=png(), prompt="p",
                                quality="max", size="1024x1024")  # fmt: skip
    assert _engine(klein, "klein").steps_run == 8 + 6


async def test_complexity_scales_guidance_on_sd_and_is_refused_on_klein(
    sd: Harness, klein: Harness
) -> None:
    low = await sd.sdk.images.edit(model="sd", image=png(), prompt="p", complexity="low")  # type: ignore[call-arg]
    high = await sd.sdk.images.edit(model="sd", image=png(), prompt="p", complexity="high")  # type: ignore[call-arg]
    assert not np.array_equal(pixels(low.data[0].b64_json), pixels(high.data[0].b64_json))  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        await klein.sdk.images.edit(model="gpt-image-2.6-flare", image=png(), prompt="p",
                                    complexity="high", size="1024x1024")  # fmt: skip
    assert err.value.param == "complexity"
    assert "'flux2-klein' engine" in err.value.message


async def test_markup_on_klein_is_drawn_onto_the_first_image(klein: Harness) -> None:
    markup = np.zeros((64, 64, 4), np.uint8)
    cv2.circle(markup, (32, 32), 12, (255, 0, 0, 255), thickness=4)
    plain = await klein.sdk.images.edit(model="klein", image=png(), prompt="remove it")
    marked = await klein.sdk.images.edit(
        model="klein", image=png(), prompt="remove it",
        markup=("markup.png", encode_image(markup), "image/png"),
    )  # fmt: skip
    # same seed, same prompt: only the drawn-on reference differs
    assert not np.array_equal(pixels(plain.data[0].b64_json), pixels(marked.data[0].b64_json))  # type: ignore[index]


async def test_markup_on_sd_keeps_every_pixel_outside_the_circle(sd: Harness) -> None:
    source = gradient((64, 64))
    markup = np.zeros((64, 64, 4), np.uint8)
    cv2.circle(markup, (32, 32), 12, (255, 0, 0, 255), thickness=2)
    result = await sd.sdk.images.edit(
        model="sd", image=("in.png", encode_image(source), "image/png"), prompt="a flower",
        markup=("markup.png", encode_image(markup), "image/png"),
    )  # fmt: skip
    out = pixels(result.data[0].b64_json)  # type: ignore[index]
    yy, xx = np.mgrid[0:64, 0:64]
    distance = (xx - 32) ** 2 + (yy - 32) ** 2
    assert np.array_equal(out[distance > 15**2], source[distance > 15**2])
    assert np.abs(out[distance < 10**2].astype(int) - source[distance < 10**2].astype(int)).mean() > 5
