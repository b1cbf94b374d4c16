"""JoyAI-Image-Edit end to end: tiny random weights from a folder, one image, masks, partials,
cancellation, generations and refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from retouch.errors import Cancelled
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import model, serve
from tests.engines.helpers import CancelAfter, hole_mask, job, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch, pytest.mark.usefixtures("small_renders")]

OPTIONS = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0,
           "steps": {"low": 2, "medium": 3, "high": 4}}  # fmt: skip


@pytest.fixture
async def joy(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], joyimage_weights: Path
) -> Harness:
    return await serve(harness_factory, make_settings, model("joy", "joyimage-edit", joyimage_weights, OPTIONS))


def _engine(h: Harness) -> Any:
    return h.services.workers["joy"].engine


async def test_edit_is_reproducible_and_listed_as_apache(joy: Harness) -> None:
    first = await joy.sdk.images.edit(model="joy", image=png(), prompt="make it blue")
    again = await joy.sdk.images.edit(model="joy", image=png(), prompt="make it blue")
    out = pixels(first.data[0].b64_json)
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out, pixels(again.data[0].b64_json))  # the seeded reference latents
    assert _engine(joy).steps_run == 8
    listed = {m.id: m async for m in joy.sdk.models.list()}
    assert (listed["joy"].model_extra or {}).get("license") == "apache-2.0"


async def test_one_image_only(joy: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await joy.sdk.images.edit(model="joy", image=[png(), png(shift=9)], prompt="x")
    assert "at most 1" in caught.value.message


async def test_mask_keeps_every_pixel_outside_the_edit_area(joy: Harness) -> None:
    source, hole = gradient((64, 64)), (16, 8, 48, 40)
    result = await joy.sdk.images.edit(
        model="joy", image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"), prompt="a rose", n=2,
    )  # fmt: skip
    inside = hole_mask((64, 64), hole)
    images = [pixels(d.b64_json) for d in result.data]
    for out in images:
        assert np.array_equal(out[~inside], source[~inside])
    assert not np.array_equal(images[0][inside], images[1][inside])  # seeds 0 and 1


async def test_generations_are_native_text_to_image(joy: Harness) -> None:
    result = await joy.sdk.images.generate(model="joy", prompt="a cat", size="64x64")  # type: ignore[arg-type]
    assert pixels(result.data[0].b64_json).shape == (64, 64, 3)


async def test_streaming_sends_partials_and_cancellation_stops_at_the_next_step(joy: Harness) -> None:
    stream = await joy.sdk.images.edit(model="joy", image=png(), prompt="x", stream=True, partial_images=2)
    kinds = [event.type async for event in stream]
    assert kinds.count("image_edit.partial_image") == 2
    assert kinds[-1] == "image_edit.completed"
    engine = _engine(joy)
    before = engine.steps_run
    with pytest.raises(Cancelled):  # the run's check, step 1's two passes (CFG) and callback
        engine.run(job(), CancelAfter(checks=4))
    assert engine.steps_run - before == 1
    assert engine.cancelled_runs == 1
