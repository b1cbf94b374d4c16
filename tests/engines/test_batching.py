"""Cross-request batching (``batch_max_size`` / ``batch_window_ms``): concurrent requests for
one model share a pipeline call, each keeping its own seed, prompt, image, partials, usage row
and cancellation.

Batched and unbatched outputs are compared within 1/255: a batched matmul on the CPU rounds the
last float bits differently from a batch of one, which can move a pixel across a rounding
boundary (measured: < 0.01/255 before rounding to 8 bits).

FLUX.2-klein batches its unmasked edits and generations through a per-row override of the
pipeline's reference encoding (``flux2_klein.per_row_references``): every test compares each
batched request with the same request run alone, so a row that got another request's prompt,
seed or references fails (``test_klein_without_per_row_references_rows_would_mix`` shows the
check catches the pipeline's own shared-reference behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retouch.config import Settings
from retouch.engine import flux2_klein
from retouch.engine.registry import build_engine
from retouch.engine.types import EditJob, EngineLoadError
from retouch.errors import Cancelled
from tests.conftest import Harness, encode_image, gradient, mask_bytes
from tests.engines.conftest import KLEIN_OPTIONS, QWEN_OPTIONS, model, serve
from tests.engines.helpers import pixels

pytestmark = [pytest.mark.anyio, pytest.mark.torch]

SD = {"max_pixels": 64 * 64, "min_pixels": 0, "steps": 2, "seed": 0}
KONTEXT = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0, "steps": 3}
KLEIN = {**KLEIN_OPTIONS, "steps": 3}
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


@pytest.mark.parametrize(("engine", "weights", "options"), [
    ("flux-kontext", "kontext_weights", KONTEXT),
    ("flux2-klein", "klein_weights", KLEIN),
])  # fmt: skip
async def test_each_request_gets_its_own_partials(
    engine: str, weights: str, options: dict[str, Any],
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings],
    request: pytest.FixtureRequest,
) -> None:
    h = await serve(harness_factory, make_settings, model(
        "m", engine, request.getfixturevalue(weights), {**options, **BATCH}, workers=3,
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


def _job(i: int, *, references: int = 1, size: tuple[int, int] = (64, 64), generate: bool = False,
         seed: int = 0, masked: bool = False) -> EditJob:  # fmt: skip
    """Request i: its own prompt and images (image k of request i: the gradient rolled by
    17 i + 5 k along alternating axes, ``size`` = (width, height)); ``masked``: its own edit
    area (255 = edit, as ``EditJob.mask``), image 1 then is the start image."""
    images = tuple(np.roll(gradient(size), 17 * i + 5 * k, axis=(1, 0)[k % 2]) for k in range(references))
    mask = None
    if masked:
        mask = np.zeros((64, 64), np.uint8)
        mask[8 + 8 * i : 40 + 8 * i, 16:48] = 255
    return EditJob(prompt=PROMPTS[i], images=images, mask=mask, size=(64, 64), n=1, quality="high",
                   input_fidelity="low", background="auto", partial_images=0, generate=generate,
                   seed=seed)  # fmt: skip


def _concurrently(engine: Any, jobs: list[EditJob]) -> list[Any]:
    """Every job on its own thread at once (as the scheduler's workers call ``run``)."""
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = engine.run(jobs[i], Flag()).images[0]
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [results[i] for i in range(len(jobs))]


def _klein(folder: Path, options: dict[str, Any], workers: int = 1) -> Any:
    engine = build_engine(model("m", "flux2-klein", folder, options, workers=workers))
    engine.load()
    return engine


FLOAT_TOL = 5e-6
"""Batched vs alone, on the pipeline's float32 output in [0, 1] (before rounding to 8 bits):
a batch reorders float32 sums in the matmuls and attention (measured: <= 6e-7). The tiny
random klein reacts little to its inputs: another request's prompt in a row moves it by
~5e-5, another's references by ~4.5e-4, another's seed by ~0.9 (measured,
``test_klein_prompt_seed_and_references_are_per_row``), so 8-bit images within 1/255 could not
tell a mixed-up row from a right one; this bound sits ~8x above the batching noise and ~9x
below the smallest mix-up."""


def _key(job: EditJob) -> tuple[Any, ...]:
    return (job.prompt, job.seed, job.generate, job.size, tuple(p.tobytes() for p in job.images))


class KleinRows:
    """Records every klein pipeline call's float output per request (``_key``), alone or as
    a row of a batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[tuple[tuple[Any, ...], np.ndarray]]] = []
        last: list[np.ndarray] = []
        to_pixels = flux2_klein.to_pixels

        def spy(images: Any) -> Any:
            last[:] = [np.asarray(images, np.float64)]
            return to_pixels(images)

        def record(jobs: list[EditJob]) -> None:
            self.calls.append([(_key(j), last[0][row]) for row, j in enumerate(jobs)])

        engine = flux2_klein.Flux2KleinEngine
        alone, batch = engine._generate, engine._generate_batch

        def generate(this: Any, job: EditJob, progress: Any) -> Any:
            out = alone(this, job, progress)
            record([job])
            return out

        def generate_batch(this: Any, members: list[Any]) -> Any:
            out = batch(this, members)
            record([m.job for m in members])
            return out

        monkeypatch.setattr(flux2_klein, "to_pixels", spy)
        monkeypatch.setattr(engine, "_generate", generate)
        monkeypatch.setattr(engine, "_generate_batch", generate_batch)

    def last(self) -> dict[tuple[Any, ...], np.ndarray]:
        return dict(self.calls[-1])

    def distances(self, alone: list[dict[tuple[Any, ...], np.ndarray]]) -> list[float]:
        """For every row of the last call: max |batched - the same request alone|."""
        want = {k: v for call in alone for k, v in call.items()}
        return [float(np.abs(v - want[k]).max()) for k, v in self.calls[-1]]


@pytest.fixture
def klein_rows(monkeypatch: pytest.MonkeyPatch) -> KleinRows:
    return KleinRows(monkeypatch)


KLEIN_CASES = {
    "one reference": {"references": 1},
    "two references": {"references": 2},
    "non-square references": {"references": 2, "size": (96, 64)},
    "generations": {"references": 1, "generate": True},
    "masked": {"references": 1, "masked": True},
    "masked with a reference": {"references": 2, "masked": True},
}


@pytest.mark.parametrize("case", list(KLEIN_CASES))
def test_klein_batched_rows_equal_each_request_alone(
    case: str, klein_weights: Path, klein_rows: KleinRows
) -> None:
    """Three requests with their own prompt, seed and references (the production loader, the
    engine's ``run`` from three threads): one call, and each row equals that request alone."""
    alone = _klein(klein_weights, KLEIN)
    batched = _klein(klein_weights, {**KLEIN, **BATCH}, workers=3)
    jobs = [_job(i, seed=100 * i, **KLEIN_CASES[case]) for i in range(3)]
    want = [alone.run(j, Flag()).images[0] for j in jobs]
    singles = [dict(c) for c in klein_rows.calls]
    got = _concurrently(batched, jobs)
    assert batched.coalescer.sizes == [3]
    assert len(klein_rows.calls[-1]) == 3  # one call, three rows
    assert max(klein_rows.distances(singles)) <= FLOAT_TOL
    assert all(close(g, w) for g, w in zip(got, want, strict=True))  # the images served
    assert not np.array_equal(got[0], got[1])


def test_klein_prompt_seed_and_references_are_per_row(klein_weights: Path, klein_rows: KleinRows) -> None:
    """Rows that differ from row 0 in one thing only, the prompt (1), the seed (2) or the
    references (3): each still equals its own request alone."""
    alone = _klein(klein_weights, KLEIN)
    batched = _klein(klein_weights, {**KLEIN, "batch_max_size": 4, "batch_window_ms": 2000}, workers=4)
    base = _job(0)
    jobs = [base, dataclasses.replace(base, prompt=PROMPTS[1]), dataclasses.replace(base, seed=7),
            dataclasses.replace(base, images=_job(1).images)]  # fmt: skip
    for j in jobs:
        alone.run(j, Flag())
    singles = [dict(c) for c in klein_rows.calls]
    _concurrently(batched, jobs)
    assert batched.coalescer.sizes == [4]
    assert max(klein_rows.distances(singles)) <= FLOAT_TOL
    first = singles[0][_key(base)]
    apart = [float(np.abs(s[_key(j)] - first).max()) for s, j in zip(singles[1:], jobs[1:], strict=True)]
    assert min(apart) > 5 * FLOAT_TOL, apart  # each of the three differences shows


def test_klein_without_per_row_references_rows_would_mix(
    klein_weights: Path, klein_rows: KleinRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with the pipeline's own ``prepare_image_latents`` (one reference list
    repeated over the batch, why klein did not batch before) the rows whose references are not
    the first row's no longer equal their requests alone: the checks above catch mixed rows."""
    alone = _klein(klein_weights, KLEIN)
    batched = _klein(klein_weights, {**KLEIN, **BATCH}, workers=3)
    monkeypatch.setattr(flux2_klein, "per_row_references", lambda pipe, rows: contextlib.nullcontext())
    jobs = [_job(i, seed=i) for i in range(3)]
    for j in jobs:
        alone.run(j, Flag())
    singles = [dict(c) for c in klein_rows.calls]
    _concurrently(batched, jobs)
    assert batched.coalescer.sizes == [3]
    distances = sorted(klein_rows.distances(singles))
    assert distances[0] <= FLOAT_TOL  # the row whose references the pipeline used
    assert distances[1] > 10 * FLOAT_TOL  # the two others got that row's references


def test_klein_requests_that_cannot_share_a_run_are_not_grouped(klein_weights: Path) -> None:
    """Different reference counts, reference sizes, output sizes, paths (masked or not, a
    generation or an edit): each runs alone (the single-request call), with exactly its own
    image; a masked edit with two references never enters the coalescer."""
    alone = _klein(klein_weights, KLEIN)
    batched = _klein(klein_weights, {**KLEIN, "batch_max_size": 7, "batch_window_ms": 300}, workers=7)
    jobs = [
        _job(0),
        _job(1, references=2),  # two references
        _job(2, size=(96, 64)),  # a wider reference
        dataclasses.replace(_job(0), size=(64, 48)),  # another output size
        _job(1, masked=True),  # the inpaint pipeline
        _job(2, generate=True),  # no references
        _job(0, references=3, masked=True),  # masked with two references: always alone
    ]
    want = [alone.run(j, Flag()).images[0] for j in jobs]
    got = _concurrently(batched, jobs)
    assert sorted(batched.coalescer.sizes) == [1] * 6
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))  # exactly the lone call


async def test_klein_concurrent_http_requests_share_one_call(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path,
    klein_rows: KleinRows,
) -> None:
    """Over HTTP (the official SDK): three edits with their own prompt and image, then three
    generations: two calls, every request its own image equal to the unbatched server's, six
    usage rows."""
    alone = await serve(harness_factory, make_settings, model("m", "flux2-klein", klein_weights, KLEIN))
    batched = await serve(harness_factory, make_settings,
                          model("m", "flux2-klein", klein_weights, {**KLEIN, **BATCH}, workers=3))  # fmt: skip

    async def generate(h: Harness, i: int) -> np.ndarray:
        r = await h.sdk.images.generate(model="m", prompt=PROMPTS[i], size="64x64")
        return pixels(r.data[0].b64_json)

    want = [pixels((await alone.sdk.images.edit(model="m", image=_image(i), prompt=PROMPTS[i]))
                   .data[0].b64_json) for i in range(3)]  # fmt: skip
    singles = [dict(c) for c in klein_rows.calls]
    got = await _three(batched, "m")
    assert max(klein_rows.distances(singles)) <= FLOAT_TOL
    assert all(close(g, w) for g, w in zip(got, want, strict=True))

    want = [await generate(alone, i) for i in range(3)]
    singles = [dict(c) for c in klein_rows.calls[-3:]]
    got = list(await asyncio.gather(*(generate(batched, i) for i in range(3))))
    assert max(klein_rows.distances(singles)) <= FLOAT_TOL
    assert all(close(g, w) for g, w in zip(got, want, strict=True))
    assert batched.services.workers["m"].engine.coalescer.sizes == [3, 3]
    rows = batched.services.gate.records
    assert len(rows) == 6
    assert all(r.status == 200 for r in rows)


@pytest.mark.parametrize(("engine", "weights", "options", "settings"), [
    ("flux-kontext", "kontext_weights", KONTEXT, {"accept_license": "non-commercial"}),
    ("flux2-klein", "klein_weights", KLEIN, {}),
])  # fmt: skip
def test_one_request_leaving_the_batch_does_not_spoil_the_others(
    engine: str, weights: str, options: dict[str, Any], settings: dict[str, Any],
    gate: Callable[..., Any], request: pytest.FixtureRequest, klein_rows: KleinRows,
) -> None:
    """Each request its own seed, so every row differs; klein's rows are also compared at the
    float level (``FLOAT_TOL``)."""
    folder = request.getfixturevalue(weights)
    alone = build_engine(model("m", engine, folder, options, **settings))
    batched = build_engine(model("m", engine, folder, {**options, **BATCH}, workers=3, **settings))
    alone.load()
    batched.load()
    want = [alone.run(_job(i, seed=i), Flag()).images[0] for i in range(3)]
    singles = [dict(c) for c in klein_rows.calls]
    held = gate(batched.pipe.transformer, hold_from=2)  # the batch stops before its 2nd step
    flags = [Flag() for _ in range(3)]
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = batched.run(_job(i, seed=i), flags[i]).images[0]
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
    if engine == "flux2-klein":
        assert len(klein_rows.calls[-1]) == 3  # the cancelled row was computed and dropped
        assert max(klein_rows.distances(singles)) <= FLOAT_TOL


@pytest.mark.parametrize(("engine", "weights", "options", "workers", "says"), [
    ("qwen-image-edit", "qwen_weights", {**QWEN_OPTIONS, "batch_max_size": 2}, 2, "does not batch"),
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
