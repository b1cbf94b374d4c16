"""FLUX.2-klein end to end: tiny random weights loaded from a folder, the official SDK over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from retouch.config import Settings
from tests.conftest import Harness, decode_b64, encode_image, gradient, mask_bytes
from tests.engines.conftest import KLEIN_OPTIONS, model, serve
from tests.engines.helpers import hole_mask, pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]


@pytest.fixture
async def klein(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path
) -> Harness:
    return await serve(
        harness_factory, make_settings, model("klein", "flux2-klein", klein_weights, KLEIN_OPTIONS)
    )


def _engine(h: Harness) -> Any:
    return h.services.workers["klein"].engine


async def test_edit_generates_an_image_of_the_requested_size(klein: Harness) -> None:
    result = await klein.sdk.images.edit(model="klein", image=png(), prompt="make it blue")
    out = pixels(result.data[0].b64_json)
    assert out.shape == (64, 64, 3)
    assert result.size == "64x64"
    assert np.abs(out.astype(int) - gradient((64, 64)).astype(int)).mean() > 5  # really generated
    assert _engine(klein).steps_run == 4  # quality auto = high -> klein's 4 steps
    assert result.usage is not None
    assert result.usage.output_tokens > 0


async def test_references_change_the_result(klein: Harness) -> None:
    one = await klein.sdk.images.edit(model="klein", image=png(), prompt="mix")
    three = await klein.sdk.images.edit(
        model="klein", image=[png(), png(shift=20), png((48, 64), shift=40)], prompt="mix"
    )
    assert not np.array_equal(pixels(one.data[0].b64_json), pixels(three.data[0].b64_json))
    again = await klein.sdk.images.edit(model="klein", image=png(), prompt="mix")
    assert np.array_equal(pixels(one.data[0].b64_json), pixels(again.data[0].b64_json))


async def test_without_a_seed_option_each_request_gets_a_new_image(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path
) -> None:
    options = {k: v for k, v in KLEIN_OPTIONS.items() if k != "seed"}
    h = await serve(harness_factory, make_settings, model("klein", "flux2-klein", klein_weights, options))
    first = await h.sdk.images.edit(model="klein", image=png(), prompt="mix")
    second = await h.sdk.images.edit(model="klein", image=png(), prompt="mix")
    assert not np.array_equal(pixels(first.data[0].b64_json), pixels(second.data[0].b64_json))


async def test_more_images_than_the_family_takes_is_a_400_naming_the_limit(klein: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await klein.sdk.images.edit(model="klein", image=[png()] * 5, prompt="mix")
    assert caught.value.code == "too_many_images"
    assert "at most 4" in caught.value.message


async def test_mask_keeps_every_pixel_outside_the_edit_area(klein: Harness) -> None:
    source = gradient((64, 64))
    hole = (16, 8, 48, 40)
    result = await klein.sdk.images.edit(
        model="klein",
        image=("in.png", encode_image(source), "image/png"),
        mask=("mask.png", mask_bytes((64, 64), hole), "image/png"),
        prompt="a red rose",
    )
    out = pixels(result.data[0].b64_json)
    inside = hole_mask((64, 64), hole)
    assert np.array_equal(out[~inside], source[~inside])
    assert np.abs(out[inside].astype(int) - source[inside].astype(int)).mean() > 5


async def test_n_images_come_from_one_pipeline_call(klein: Harness) -> None:
    result = await klein.sdk.images.edit(model="klein", image=png(), prompt="x", n=3)
    images = [pixels(d.b64_json) for d in result.data]
    assert len(images) == 3
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[1], images[2])
    assert _engine(klein).steps_run == 4  # one batched call of 4 steps, not three


async def test_sizes_map_to_the_family_budget_then_to_the_requested_size(klein: Harness) -> None:
    wide = await klein.sdk.images.edit(model="klein", image=png(), prompt="x", size="96x48")  # type: ignore[arg-type]
    assert pixels(wide.data[0].b64_json).shape == (48, 96, 3)
    # OpenAI's names follow OpenAI's sizes; klein renders within its budget and is resized.
    openai_size = await klein.sdk.images.edit(
        model="gpt-image-1", image=png(), prompt="x", size="1536x1024"
    )
    assert decode_b64(openai_size.data[0].b64_json or "").size == (1536, 1024)
    assert openai_size.size == "1536x1024"


async def test_quality_and_input_fidelity_choose_steps_and_strength(klein: Harness) -> None:
    engine = _engine(klein)
    await klein.sdk.images.edit(model="klein", image=png(), prompt="x", quality="low")
    assert engine.steps_run == 2
    await klein.sdk.images.edit(model="klein", image=png(), prompt="x", input_fidelity="high")
    assert engine.steps_run == 2 + 3  # img2img from the input at strength 0.75: 3 of 4 steps


async def test_streaming_sends_real_partial_images(klein: Harness) -> None:
    stream = await klein.sdk.images.edit(
        model="klein", image=png(), prompt="x", stream=True, partial_images=3
    )
    partials: list[np.ndarray] = []
    final = None
    async for event in stream:
        if event.type == "image_edit.partial_image":
            assert event.partial_image_index == len(partials)
            partials.append(pixels(event.b64_json))
        elif event.type == "image_edit.completed":
            final = pixels(event.b64_json)
    assert final is not None
    assert len(partials) == 3  # 4 steps: after steps 1, 2 and 3
    for p in partials:
        assert p.shape == final.shape
        assert not np.array_equal(p, final)
    assert not np.array_equal(partials[0], partials[2])  # the image takes shape over the steps


async def test_full_queue_is_a_429_with_retry_after(
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
    klein_weights: Path,
    gate: Callable[..., Any],
) -> None:
    h = await serve(
        harness_factory, make_settings,
        model("klein", "flux2-klein", klein_weights, KLEIN_OPTIONS), queue={"max_queue": 0},
    )  # fmt: skip
    held = gate(_engine(h).pipe.transformer, hold_from=1)
    first = asyncio.ensure_future(h.sdk.images.edit(model="klein", image=png(), prompt="x"))
    assert await asyncio.to_thread(held.entered.wait, 30)
    with pytest.raises(openai.RateLimitError) as caught:
        await h.sdk.images.edit(model="klein", image=png(), prompt="x")
    assert caught.value.response.headers.get("retry-after")
    held.release.set()
    assert len((await first).data) == 1


async def test_engine_failure_is_a_500_and_the_worker_recovers(
    klein: Harness, gate: Callable[..., Any]
) -> None:
    failing = gate(_engine(klein).pipe.transformer)
    failing.fail_next = True
    with pytest.raises(openai.InternalServerError) as caught:
        await klein.sdk.images.edit(model="klein", image=png(), prompt="x")
    assert caught.value.status_code == 500
    assert caught.value.code == "engine_error"
    result = await klein.sdk.images.edit(model="klein", image=png(), prompt="x")
    assert pixels(result.data[0].b64_json).shape == (64, 64, 3)


async def test_models_list_names_the_engine(klein: Harness) -> None:
    listed = {m.id: m.owned_by async for m in klein.sdk.models.list()}
    assert listed["klein"] == "retouch:flux2-klein"


async def test_transparent_background_is_a_real_alpha_channel(klein: Harness) -> None:
    result = await klein.sdk.images.edit(
        model="klein", image=png(), prompt="x", background="transparent"
    )
    assert result.background == "transparent"
    assert decode_b64(result.data[0].b64_json).mode == "RGBA"
    jpeg = await klein.sdk.images.edit(model="klein", image=png(), prompt="x", background="opaque")
    assert jpeg.background == "opaque"
    assert decode_b64(jpeg.data[0].b64_json).mode == "RGB"
