"""Cross-request batching (``batch_max_size`` / ``batch_window_ms``): concurrent requests for
one model share a pipeline call, each keeping its own seed, prompt, image, partials, usage row
and cancellation.

Batched and unbatched outputs are compared within 1/255: a batched matmul on the CPU rounds the
last float bits differently from a batch of one, which can move a pixel across a rounding
boundary (measured: < 0.01/255 before rounding to 8 bits).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retouch.config import Settings
from retouch.engine.registry import build_engine
from retouch.engine.types import EditJob, EngineLoadError
from retouch.errors import Cancelled
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import KLEIN_OPTIONS, model, serve
from tests.engines.helpers import pixels

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

SD = {"max_pixels": 64 * 64, "min_pixels": 0, "steps": 2, "seed": 0}
KONTEXT = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0, "steps": 3}
BATCH = {"batch_max_size": 3, "batch_window_ms": 2000}  # fills up long before the window ends
PROMPTS = ["a red rose", "a blue bird", "a green door"]


def _image(i: int) -> tuple[str, bytes, str]:
    return (f"in{i}.png", encode_image(np.roll(gradient((64, 64)), 17 * i, axis=1)), "image/png")


def _mask() -> tuple[str, bytes, str]:
    return ("mask.png", mask_bytes((64, 64), (16, 8, 48, 40)), "image/png")


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


async def _three(h: Harness, name: str, **kw: Any) -> list[np.ndarray]:
    results = await asyncio.gather(*(
        h.sdk.images.edit(model=name, image=_image(i), prompt=PROMPTS[i], **kw) for i in range(3)
    ))  # fmt: skip
    return [pixels(r.data[0].b64_json) for r in results]


@pytest.mark.parametrize(("engine", "weights", "options", "extra"), [
    ("sd-inpaint", "sd_weights", SD, {}),
    ("flux-kontext", "kontext_weights", KONTEXT, {"accept_license": "non-commercial"}),
])  # fmt: skip
async def test_concurrent_requests_share_one_call_and_match_unbatched(
    engine: str, weights: str, options: dict[str, Any], extra: dict[str, Any],
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings],
    request: pytest.FixtureRequest,
) -> None:
    folder = request.getfixturevalue(weights)
    alone = await serve(harness_factory, make_settings, model("m", engine, folder, options, **extra))
    batched = await serve(harness_factory, make_settings,
                          model("m", engine, folder, {**options, **BATCH}, workers=3, **extra))  # fmt: skip
    coalescer = batched.services.workers["m"].engine.coalescer
    for kw in ({}, {"mask": _mask()}):
        want = [pixels((await alone.sdk.images.edit(model="m", image=_image(i), prompt=PROMPTS[i], **kw))
                       .data[0].b64_json) for i in range(3)]  # fmt: skip
        got = await _three(batched, "m", **kw)
        assert all(close(g, w) for g, w in zip(got, want, strict=True))
        assert not np.array_equal(got[0], got[1])  # each row kept its own prompt, image, seed
    assert coalescer.sizes == [3, 3]  # two pipeline calls for six requests
    rows = batched.services.gate.records
    assert len(rows) == 6
    assert all(r.status == 200 for r in rows)


async def test_a_lone_request_runs_alone_after_the_window(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], sd_weights: Path
) -> None:
    alone = await serve(harness_factory, make_settings, model("m", "sd-inpaint", sd_weights, SD))
    h = await serve(harness_factory, make_settings, model(
        "m", "sd-inpaint", sd_weights, {**SD, "batch_max_size": 4, "batch_window_ms": 30}, workers=4))  # fmt: skip
    want = await alone.sdk.images.edit(model="m", image=_image(0), prompt="x")
    got = await h.sdk.images.edit(model="m", image=_image(0), prompt="x")
    assert np.array_equal(pixels(got.data[0].b64_json), pixels(want.data[0].b64_json))  # same call
    assert h.services.workers["m"].engine.coalescer.sizes == [1]


async def test_each_request_gets_its_own_partials(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], kontext_weights: Path
) -> None:
    h = await serve(harness_factory, make_settings, model(
        "m", "flux-kontext", kontext_weights, {**KONTEXT, **BATCH}, workers=3,
        accept_license="non-commercial"))  # fmt: skip

    async def stream(i: int) -> tuple[list[np.ndarray], np.ndarray]:
        events = await h.sdk.images.edit(model="m", image=_image(i), prompt=PROMPTS[i], stream=True,
                                         partial_images=2)  # fmt: skip
        partials, final = [], None
        async for event in events:
            if event.type == "image_edit.partial_image":
                partials.append(pixels(event.b64_json))
            elif event.type == "image_edit.completed":
                final = pixels(event.b64_json)
        assert final is not None
        return partials, final

    results = await asyncio.gather(*(stream(i) for i in range(3)))
    assert h.services.workers["m"].engine.coalescer.sizes == [3]
    for partials, _ in results:
        assert len(partials) == 2  # 3 steps, 2 partials: after steps 1 and 2
    assert not np.array_equal(results[0][0][0], results[1][0][0])  # row 0's preview is not row 1's


class Flag:
    """A ``Progress`` whose cancel flag the test sets."""

    def __init__(self) -> None:
        self.event = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()

    def partial(self, image: Any, *, output_index: int = 0) -> None:
        return None


def _job(i: int) -> EditJob:
    return EditJob(prompt=PROMPTS[i], images=(np.roll(gradient((64, 64)), 17 * i, axis=1),),
                   mask=None, size=(64, 64), n=1, quality="high", input_fidelity="low",
                   background="auto", partial_images=0)  # fmt: skip


def test_one_request_leaving_the_batch_does_not_spoil_the_others(
    kontext_weights: Path, gate: Callable[..., Any]
) -> None:
    settings = {"accept_license": "non-commercial"}
    alone = build_engine(model("m", "flux-kontext", kontext_weights, KONTEXT, **settings))
    batched = build_engine(model("m", "flux-kontext", kontext_weights, {**KONTEXT, **BATCH}, workers=3, **settings))
    alone.load()
    batched.load()
    want = [alone.run(_job(i), Flag()).images[0] for i in range(3)]
    held = gate(batched.pipe.transformer, hold_from=2)  # the batch stops before its 2nd step
    flags = [Flag() for _ in range(3)]
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = batched.run(_job(i), flags[i]).images[0]
        except Cancelled as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    threads[0].start()  # the leader: it opens the group and waits out the window
    for _ in range(500):
        if batched.coalescer._open:
            break
        threading.Event().wait(0.01)
    threads[1].start()
    threads[2].start()
    assert held.entered.wait(30)
    assert held.calls >= 1
    flags[0].event.set()  # the request that opened the batch goes away mid-batch
    threads[0].join(10)
    assert isinstance(results[0], Cancelled)  # it returned at once, the batch still running
    assert 1 not in results
    assert 2 not in results
    held.release.set()
    for t in threads:
        t.join(30)
    assert batched.coalescer.sizes == [3]
    assert close(results[1], want[1])
    assert close(results[2], want[2])
    assert batched.steps_run == 3  # the batch ran all its steps for the two that stayed


@pytest.mark.parametrize(("engine", "weights", "options", "workers", "says"), [
    ("flux2-klein", "klein_weights", {**KLEIN_OPTIONS, "batch_max_size": 2}, 2, "does not batch"),
    ("sd-inpaint", "sd_weights", {**SD, "batch_max_size": 4}, 2, "workers >= 4"),
    ("sd-inpaint", "sd_weights", {**SD, "batch_max_size": 2, "cache": {"kind": "taylorseer"}}, 2,
     "cannot be combined"),
])  # fmt: skip
def test_batching_settings_that_cannot_work_fail_at_start_up(
    engine: str, weights: str, options: dict[str, Any], workers: int, says: str,
    request: pytest.FixtureRequest,
) -> None:
    built = build_engine(model("m", engine, request.getfixturevalue(weights), options, workers=workers))
    with pytest.raises(EngineLoadError, match=says):
        built.load()
