"""FLUX.1-Kontext end to end: tiny random weights from a folder, the licence gate, the SDK."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from retouch.engine.types import EngineLoadError
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import model, serve
from tests.engines.helpers import hole_mask, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

OPTIONS = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0,
           "steps": {"low": 2, "medium": 3, "high": 4}}  # fmt: skip


@pytest.fixture
async def kontext(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], kontext_weights: Path
) -> Harness:
    return await serve(harness_factory, make_settings, model(
        "kontext", "flux-kontext", kontext_weights, OPTIONS, accept_license="non-commercial"))  # fmt: skip


def _engine(h: Harness) -> Any:
    return h.services.workers["kontext"].engine


async def test_a_non_commercial_model_needs_the_licence_acknowledged(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], kontext_weights: Path
) -> None:
    with pytest.raises(EngineLoadError) as caught:
        await serve(harness_factory, make_settings, model("kontext", "flux-kontext", kontext_weights, OPTIONS))
    message = str(caught.value)
    assert "'kontext'" in message
    assert "flux-1-dev-non-commercial" in message
    assert 'accept_license = "non-commercial"' in message


async def test_edit_renders_the_requested_size(kontext: Harness) -> None:
    result = await kontext.sdk.images.edit(model="kontext", image=png(), prompt="make it blue")
    out = pixels(result.data[0].b64_json)
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - gradient((64, 64)).astype(int)).mean() > 5
    assert _engine(kontext).steps_run == 4
    wide = await kontext.sdk.images.edit(model="kontext", image=png(), prompt="x", size="96x48")  # type: ignore[arg-type]
    assert pixels(wide.data[0].b64_json).shape == (48, 96, 3)


async def test_mask_keeps_every_pixel_outside_the_edit_area(kontext: Harness) -> None:
    source, hole = gradient((64, 64)), (16, 8, 48, 40)
    result = await kontext.sdk.images.edit(
        model="kontext", image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"), prompt="a rose", n=2,
    )  # fmt: skip
    inside = hole_mask((64, 64), hole)
    images = [pixels(d.b64_json) for d in result.data]
    for out in images:
        assert np.array_equal(out[~inside], source[~inside])
    assert not np.array_equal(images[0], images[1])  # seeds 0 and 1


async def test_one_image_only(kontext: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await kontext.sdk.images.edit(model="kontext", image=[png(), png(shift=9)], prompt="x")
    assert "at most 1" in caught.value.message


async def test_streaming_partials_and_models_list_licence(kontext: Harness) -> None:
    stream = await kontext.sdk.images.edit(
        model="kontext", image=png(), prompt="x", stream=True, partial_images=2
    )
    kinds = [event.type async for event in stream]
    assert kinds.count("image_edit.partial_image") == 2
    assert kinds[-1] == "image_edit.completed"
    listed = {m.id: m async for m in kontext.sdk.models.list()}
    assert listed["kontext"].owned_by == "retouch:flux-kontext"
    assert (listed["kontext"].model_extra or {}).get("license") == "flux-1-dev-non-commercial"
