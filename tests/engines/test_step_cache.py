"""Step caching (diffusers' first-block and TaylorSeer hooks) as the ``cache`` engine option."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retouch.config import Settings
from retouch.engine.registry import build_engine
from retouch.engine.types import EditJob, EngineLoadError
from retouch.errors import Cancelled
from tests.conftest import gradient
from tests.engines.conftest import KLEIN_OPTIONS, model, serve
from tests.engines.helpers import pixels, png

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

STEPS = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0, "steps": 12}
FIRST_BLOCK = {"kind": "first-block", "threshold": 0.5}  # random weights change a lot per step
TAYLORSEER = {"kind": "taylorseer", "cache_interval": 3}


class CountCalls:
    """Counts forward calls of a module: the query projection in the last block's attention, which a
    skipped or predicted step never reaches (the cache hooks replace the forward of the block or
    of its attention, so hooks on those would still fire)."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, *args: Any) -> None:
        self.calls += 1


class StopAfter:
    """A ``Progress`` that cancels the job after ``steps`` denoiser passes."""

    def __init__(self, steps: int | None) -> None:
        self.steps, self.checks = steps, 0

    @property
    def cancelled(self) -> bool:
        return self.steps is not None and self.checks > self.steps

    def check(self) -> None:
        self.checks += 1
        if self.cancelled:
            raise Cancelled("test")

    def partial(self, image: Any, *, output_index: int = 0) -> None:
        return None


def _job(prompt: str = "x") -> EditJob:
    return EditJob(prompt=prompt, images=(gradient((64, 64)),), mask=None, size=(64, 64), n=1,
                   quality="high", input_fidelity="low", background="auto", partial_images=0)  # fmt: skip


async def test_first_block_cache_skips_blocks_under_true_cfg(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], qwen_weights: Path,
    small_qwen_references: None,
) -> None:
    plain = await serve(harness_factory, make_settings, model("q", "qwen-image-edit", qwen_weights, STEPS))
    cached = await serve(harness_factory, make_settings,
                         model("q", "qwen-image-edit", qwen_weights, {**STEPS, "cache": FIRST_BLOCK}))  # fmt: skip
    engine = cached.services.workers["q"].engine
    tail = CountCalls(engine.pipe.transformer.transformer_blocks[-1].attn.to_q)
    a = pixels((await plain.sdk.images.edit(model="q", image=png(), prompt="x")).data[0].b64_json)
    b = pixels((await cached.sdk.images.edit(model="q", image=png(), prompt="x")).data[0].b64_json)
    assert tail.calls < 2 * 12  # 12 steps x (cond + uncond) passes, some blocks skipped
    assert a.shape == b.shape
    assert not np.array_equal(a, b)  # lossy: the measured cost is in bench/step_cache.py


async def test_taylorseer_on_a_pipeline_without_its_own_cache_context(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], kontext_weights: Path
) -> None:
    h = await serve(harness_factory, make_settings, model(
        "k", "flux-kontext", kontext_weights, {**STEPS, "cache": TAYLORSEER},
        accept_license="non-commercial"))  # fmt: skip
    tail = CountCalls(h.services.workers["k"].engine.pipe.transformer.single_transformer_blocks[-1].attn.to_q)
    result = await h.sdk.images.edit(model="k", image=png(), prompt="x")
    assert pixels(result.data[0].b64_json).shape == (64, 64, 3)
    assert 0 < tail.calls < 12


def test_a_cancelled_request_leaves_no_cache_state_behind(kontext_weights: Path) -> None:
    settings = model("k", "flux-kontext", kontext_weights, {**STEPS, "cache": TAYLORSEER},
                     accept_license="non-commercial")  # fmt: skip
    fresh, used = build_engine(settings), build_engine(settings)
    fresh.load()
    used.load()
    with pytest.raises(Cancelled):
        used.run(_job("something else"), StopAfter(7))  # stops mid-way: the cache is half full
    want = fresh.run(_job(), StopAfter(None)).images[0]
    got = used.run(_job(), StopAfter(None)).images[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    ("engine", "weights", "cache", "says"),
    [
        ("flux2-klein", "klein_weights", FIRST_BLOCK, "taylorseer"),
        ("sd-inpaint", "sd_weights", TAYLORSEER, "UNet2DConditionModel has none"),
    ],
)
def test_unsupported_caches_fail_at_start_up(
    engine: str, weights: str, cache: dict[str, Any], says: str, request: pytest.FixtureRequest
) -> None:
    options = {**(KLEIN_OPTIONS if engine == "flux2-klein" else STEPS), "cache": cache}
    built = build_engine(model("m", engine, request.getfixturevalue(weights), options))
    with pytest.raises(EngineLoadError) as caught:
        built.load()
    assert says in str(caught.value)
    assert "'m'" in str(caught.value)


def test_unknown_cache_settings_are_refused() -> None:
    with pytest.raises(EngineLoadError, match="cache"):
        build_engine(model("m", "flux2-klein", Path("/nowhere"), {"cache": {"kind": "magic"}}))
    with pytest.raises(EngineLoadError, match="cache_intervall"):
        build_engine(model("m", "flux2-klein", Path("/nowhere"),
                           {"cache": {"kind": "taylorseer", "cache_intervall": 3}}))  # fmt: skip
