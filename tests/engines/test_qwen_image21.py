"""Qwen-Image-2.1 end to end: tiny random weights from a folder, the licence gate, references,
native RGBA, masks, partials, cancellation and refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from retouch.engine.types import EngineLoadError
from retouch.errors import Cancelled
from tests.conftest import Harness, decode_b64, encode_image, gradient, mask_bytes
from tests.engines.conftest import model, serve
from tests.engines.helpers import CancelAfter, hole_mask, job, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

OPTIONS = {"max_pixels": 64 * 64, "min_pixels": 0, "seed": 0, "steps": {"low": 2, "medium": 3, "high": 4}}


@pytest.fixture
async def qwen21(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], qwen21_weights: Path
) -> Harness:
    return await serve(harness_factory, make_settings, model(
        "q21", "qwen-image-2.1", qwen21_weights, OPTIONS, accept_license="non-commercial"))  # fmt: skip


def _engine(h: Harness) -> Any:
    return h.services.workers["q21"].engine


async def test_the_research_licence_needs_the_non_commercial_acknowledgement(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], qwen21_weights: Path
) -> None:
    with pytest.raises(EngineLoadError) as caught:
        await serve(harness_factory, make_settings, model("q21", "qwen-image-2.1", qwen21_weights, OPTIONS))
    assert "qwen-research-non-commercial" in str(caught.value)
    assert 'accept_license = "non-commercial"' in str(caught.value)


async def test_edit_with_references_and_the_models_list(qwen21: Harness) -> None:
    one = await qwen21.sdk.images.edit(model="q21", image=png(), prompt="make it blue")
    out = pixels(one.data[0].b64_json)
    assert out.shape == (64, 64, 3)
    assert _engine(qwen21).steps_run == 4
    many = await qwen21.sdk.images.edit(
        model="q21", image=[png(shift=s) for s in range(0, 50, 5)], prompt="mix", quality="low"
    )  # ten references: the model's limit
    assert not np.array_equal(pixels(many.data[0].b64_json), out)
    listed = {m.id: m async for m in qwen21.sdk.models.list()}
    assert (listed["q21"].model_extra or {}).get("license") == "qwen-research-non-commercial"


async def test_eleven_images_are_a_400_naming_the_limit(qwen21: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await qwen21.sdk.images.edit(model="q21", image=[png(shift=s) for s in range(11)], prompt="x")
    assert caught.value.status_code == 400
    assert "at most 10" in caught.value.message
    assert (caught.value.body or {}).get("param") == "image"  # type: ignore[union-attr]


async def test_transparent_background_is_the_models_own_alpha(qwen21: Harness) -> None:
    result = await qwen21.sdk.images.edit(model="q21", image=png(), prompt="cut out", background="transparent")
    image = decode_b64(result.data[0].b64_json or "")
    assert image.mode == "RGBA"
    # nothing else in retouch makes this alpha: the matting of the other engines is not run
    assert "transparent background: the model's own alpha channel" in _engine(qwen21).rgba_output(
        job(background="transparent"), [np.zeros((64, 64, 4), np.uint8)], 1).notes  # fmt: skip


async def test_mask_keeps_every_pixel_outside_the_edit_area(qwen21: Harness) -> None:
    source, hole = gradient((64, 64)), (16, 8, 48, 40)
    result = await qwen21.sdk.images.edit(
        model="q21", image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"), prompt="a rose", n=2,
    )  # fmt: skip
    inside = hole_mask((64, 64), hole)
    images = [pixels(d.b64_json) for d in result.data]
    for out in images:
        assert np.array_equal(out[~inside], source[~inside])
    assert not np.array_equal(images[0], images[1])  # seeds 0 and 1


async def test_generations_are_native_text_to_image(qwen21: Harness) -> None:
    result = await qwen21.sdk.images.generate(model="q21", prompt="a cat", size="64x64")  # type: ignore[arg-type]
    assert pixels(result.data[0].b64_json).shape == (64, 64, 3)


async def test_streaming_sends_partials_and_cancellation_stops_at_the_next_step(qwen21: Harness) -> None:
    stream = await qwen21.sdk.images.edit(model="q21", image=png(), prompt="x", stream=True, partial_images=3)
    kinds = [event.type async for event in stream]
    assert kinds.count("image_edit.partial_image") == 3  # after steps 1, 2 and 3 of 4
    assert kinds[-1] == "image_edit.completed"
    engine = _engine(qwen21)
    before = engine.steps_run
    with pytest.raises(Cancelled):  # the run's check, step 1's hook and callback; step 2's hook fails
        engine.run(job(), CancelAfter(checks=3))
    assert engine.steps_run - before == 1
    assert engine.cancelled_runs == 1
