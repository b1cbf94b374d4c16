"""LongCat-Image-Edit end to end: tiny random weights from a folder; partial images, the step
count and cancellation without a step callback (the transformer hook alone)."""

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

OPTIONS = {"max_pixels": 64 * 64, "min_pixels": 0, "seed": 0, "steps": {"low": 2, "medium": 3, "high": 4}}


@pytest.fixture
async def longcat(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], longcat_weights: Path
) -> Harness:
    return await serve(harness_factory, make_settings, model("lc", "longcat-image-edit", longcat_weights, OPTIONS))


def _engine(h: Harness) -> Any:
    return h.services.workers["lc"].engine


async def test_edit_counts_every_step_without_a_callback(longcat: Harness) -> None:
    result = await longcat.sdk.images.edit(model="lc", image=png(), prompt="make it blue", quality="medium")
    assert pixels(result.data[0].b64_json).shape == (64, 64, 3)
    assert _engine(longcat).steps_run == 3
    listed = {m.id: m async for m in longcat.sdk.models.list()}
    assert (listed["lc"].model_extra or {}).get("license") == "apache-2.0"


async def test_mask_keeps_every_pixel_outside_the_edit_area(longcat: Harness) -> None:
    source, hole = gradient((64, 64)), (16, 8, 48, 40)
    result = await longcat.sdk.images.edit(
        model="lc", image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"), prompt="a rose",
    )  # fmt: skip
    inside = hole_mask((64, 64), hole)
    out = pixels(result.data[0].b64_json)
    assert np.array_equal(out[~inside], source[~inside])


async def test_refusals_one_image_and_no_generations(longcat: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await longcat.sdk.images.edit(model="lc", image=[png(), png(shift=9)], prompt="x")
    assert "at most 1" in caught.value.message
    with pytest.raises(openai.BadRequestError) as generated:
        await longcat.sdk.images.generate(model="lc", prompt="a cat")
    assert generated.value.status_code == 400
    assert "'lc'" in generated.value.message


async def test_partials_come_from_the_transformer_hook(longcat: Harness) -> None:
    stream = await longcat.sdk.images.edit(model="lc", image=png(), prompt="x", stream=True, partial_images=3)
    kinds = [event.type async for event in stream]
    assert kinds.count("image_edit.partial_image") == 3  # after steps 1, 2 and 3 of 4
    assert kinds[-1] == "image_edit.completed"


def test_cancellation_stops_before_the_next_steps_compute(longcat_weights: Path) -> None:
    from retouch.engine.registry import build_engine
    from tests.engines.parity import small_renders

    engine = build_engine(model("lc", "longcat-image-edit", longcat_weights, OPTIONS))
    with small_renders():
        engine.load()
        calls = 0
        forward = engine.pipe.transformer.forward

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return forward(*args, **kwargs)

        engine.pipe.transformer.forward = counted
        progress = CancelAfter(checks=4)  # the run's check, step 1's two passes, step 2's first
        with pytest.raises(Cancelled):
            engine.run(job(partial_images=1), progress)
    assert calls == 2  # step 1 (cond + uncond); step 2 never ran
    assert engine.steps_run == 1
    assert engine.cancelled_runs == 1
    engine.close()
