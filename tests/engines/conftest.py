"""Fixtures for the diffusers engine tests: tiny pipelines saved once per session, served
through the production configuration path (``ModelSettings(weights=folder)`` -> ``build_app``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from retouch.config import ModelSettings, Settings  # noqa: E402
from tests.conftest import Harness  # noqa: E402
from tests.engines import tiny_pipelines  # noqa: E402

torch.set_num_threads(1)  # oneDNN spin-waits badly on a shared 2-core machine (engines.md §8)

TINY = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0}
"""Options every tiny model needs: a 64x64 generation budget and short prompts."""
KLEIN_OPTIONS = {**TINY, "text_encoder_out_layers": [1]}  # the tiny encoder has 2 layers
QWEN_OPTIONS = {**TINY, "steps": 2}
SD_OPTIONS = {"max_pixels": 64 * 64, "min_pixels": 0, "steps": 4, "seed": 0}


@pytest.fixture(scope="session")
def klein_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_klein(tmp_path_factory.mktemp("klein"))


@pytest.fixture(scope="session")
def qwen_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_qwen(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="session")
def sd_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="session")
def kontext_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_kontext(tmp_path_factory.mktemp("kontext"))


@pytest.fixture(scope="session")
def qwen21_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_qwen21(tmp_path_factory.mktemp("qwen21"))


@pytest.fixture(scope="session")
def joyimage_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_joyimage(tmp_path_factory.mktemp("joyimage"))


@pytest.fixture(scope="session")
def longcat_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipelines.save_tiny_longcat(tmp_path_factory.mktemp("longcat"))


@pytest.fixture
def small_renders() -> Iterator[None]:
    """JoyImage and LongCat render at ~1 megapixel whatever the request says (a bucket list and
    a module function); at that size the tiny models take minutes on a CPU, so the test shrinks
    both to 64x64 (``tests/engines/parity.py``'s ``small_renders`` patch)."""
    from tests.engines.parity import small_renders as patch

    with patch():
        yield


@pytest.fixture
def small_qwen_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen's pipelines resize every input to ~1 megapixel (module constants); at that size
    the tiny models take minutes on a CPU, so shrink them to 64x64 for the test."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint as qwen_inpaint
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as qwen_plus

    monkeypatch.setattr(qwen_plus, "VAE_IMAGE_SIZE", 64 * 64)
    monkeypatch.setattr(qwen_plus, "CONDITION_IMAGE_SIZE", 56 * 56)
    full_size = qwen_inpaint.calculate_dimensions
    monkeypatch.setattr(
        qwen_inpaint, "calculate_dimensions", lambda area, ratio: full_size(64 * 64, ratio)
    )


def model(name: str, engine: str, weights: Path, options: dict[str, Any], **kw: Any) -> ModelSettings:
    return ModelSettings(name=name, engine=engine, weights=str(weights), options=options, **kw)  # type: ignore[arg-type]


async def serve(
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
    *models: ModelSettings,
    **settings: Any,
) -> Harness:
    harness: Harness = await harness_factory(make_settings(models=list(models), **settings))
    return harness


class DenoiserGate:
    """Wraps a pipeline's denoiser ``forward``: counts calls and can hold or fail them.

    ``hold_from``: calls from this number on wait for ``release`` (set by the test) before
    running; ``fail_next``: the next call raises inside the pipeline.
    """

    def __init__(self, denoiser: Any, *, hold_from: int | None = None) -> None:
        self.denoiser = denoiser
        self.hold_from = hold_from
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False
        self._forward = denoiser.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated failure inside the denoiser")
        if self.hold_from is not None and self.calls >= self.hold_from:
            self.release.wait(timeout=60)
        return self._forward(*args, **kwargs)

    def __enter__(self) -> DenoiserGate:
        self.denoiser.forward = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        del self.denoiser.forward  # back to the class's forward


@pytest.fixture
def gate() -> Iterator[Callable[..., DenoiserGate]]:
    gates: list[DenoiserGate] = []

    def make(denoiser: Any, **kw: Any) -> DenoiserGate:
        g = DenoiserGate(denoiser, **kw)
        gates.append(g.__enter__())
        return g

    yield make
    for g in gates:
        g.__exit__()
