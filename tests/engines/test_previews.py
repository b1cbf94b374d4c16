"""The arithmetic behind partial images, sizes and the mask composite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retouch.engine.diffusers_common import composite, generation_size, steps_run
from retouch.engine.previews import flow_x0
from retouch.engine.types import preview_steps

pytestmark = pytest.mark.torch


@pytest.mark.parametrize(
    ("steps", "partials", "expected"),
    [(4, 3, {1, 2, 3}), (28, 3, {7, 14, 21}), (2, 3, {1}), (4, 0, set()), (40, 1, {20})],
)
def test_preview_steps(steps: int, partials: int, expected: set[int]) -> None:
    assert preview_steps(steps, partials) == expected


@pytest.mark.parametrize(("steps", "strength", "expected"), [(4, 1.0, 4), (4, 0.75, 3), (4, 0.8, 4), (40, 0.5, 20)])
def test_steps_run_matches_diffusers(steps: int, strength: float, expected: int) -> None:
    assert steps_run(steps, strength) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 1024), (1024, 1024)),
        ((1536, 1024), (1248, 832)),  # above the budget: shrunk, aspect kept
        ((256, 256), (512, 512)),  # below the floor: enlarged
        ((1000, 750), (1008, 752)),
    ],
)
def test_generation_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    got = generation_size(size, min_pixels=512 * 512, max_pixels=1024 * 1024)
    assert got == expected
    assert got[0] % 16 == 0
    assert got[1] % 16 == 0
    assert got[0] * got[1] <= 1024 * 1024


def test_composite_is_exact_outside_and_inside() -> None:
    rng = np.random.default_rng(0)
    generated = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    original = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    mask[0, 0] = 128  # a soft edge blends
    out = composite(generated, original, mask)
    keep = mask == 0
    assert np.array_equal(out[keep], original[keep])
    assert np.array_equal(out[mask == 255], generated[mask == 255])
    assert abs(int(out[0, 0, 0]) - (int(generated[0, 0, 0]) + int(original[0, 0, 0])) / 2) <= 1


@pytest.mark.parametrize("start", [0, 1])
def test_flow_x0_recovers_the_clean_sample_after_an_euler_step(start: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], device="cpu")
    scheduler.set_begin_index(start)  # img2img / inpaint skip the first steps
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 16, 4, generator=gen), torch.randn(1, 16, 4, generator=gen)
    sigma = float(scheduler.sigmas[start])
    x = (1 - sigma) * x0 + sigma * noise
    velocity = noise - x0  # the exact flow-matching velocity of this sample
    for t in scheduler.timesteps[start : start + 2]:
        x_next = scheduler.step(velocity, t, x, return_dict=False)[0]
        assert torch.allclose(flow_x0(scheduler, x_next, x), x0, atol=1e-5)
        x = x_next


def test_options_are_checked_at_start_up() -> None:
    from pydantic import ValidationError

    from retouch.engine.diffusers_common import EngineOptions

    assert EngineOptions.model_validate({"compile": True}).compile == "blocks"
    with pytest.raises(ValidationError):
        EngineOptions.model_validate({"warmup_sizes": ["1024"]})
    with pytest.raises(ValidationError):
        EngineOptions.model_validate({"quantize": "fp4"})
