"""Start-up: a missing or broken model fails while the server starts, naming the model, where it
looked and the command that fetches it; never on the first request."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retouch.config import Settings
from retouch.engine.types import EngineLoadError
from tests.engines.conftest import KLEIN_OPTIONS, model, serve

pytestmark = [pytest.mark.anyio, pytest.mark.torch]


async def _start_error(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], *models: Any
) -> str:
    with pytest.raises(EngineLoadError) as caught:
        await serve(harness_factory, make_settings, *models)
    return str(caught.value)


async def test_missing_folder(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    where = tmp_path / "nowhere"
    message = await _start_error(
        harness_factory, make_settings, model("klein", "flux2-klein", where, KLEIN_OPTIONS)
    )
    assert "'klein'" in message
    assert str(where) in message
    assert "model_index.json" in message


async def test_hub_id_missing_from_the_cache(
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    m = model("klein", "flux2-klein", Path("x"), {})
    message = await _start_error(
        harness_factory, make_settings, m.model_copy(update={"weights": "example/not-cached"})
    )
    assert "'example/not-cached'" in message
    assert str(tmp_path / "hub") in message
    assert "retouch models pull klein" in message


async def test_broken_weights(
    harness_factory: Callable[..., Any],
    make_settings: Callable[..., Settings],
    klein_weights: Path,
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(klein_weights, broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # an interrupted download
    message = await _start_error(
        harness_factory, make_settings, model("klein", "flux2-klein", broken, KLEIN_OPTIONS)
    )
    assert "could not load the pipeline" in message
    assert str(broken) in message
    assert "retouch models pull klein" in message


async def test_unknown_option_and_several_workers_are_refused(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path
) -> None:
    message = await _start_error(
        harness_factory, make_settings,
        model("klein", "flux2-klein", klein_weights, {**KLEIN_OPTIONS, "stpes": 3}),
    )  # fmt: skip
    assert "stpes" in message
    message = await _start_error(
        harness_factory, make_settings,
        model("klein", "flux2-klein", klein_weights, KLEIN_OPTIONS, workers=2),
    )  # fmt: skip
    assert "workers = 1" in message


async def test_warmup_sizes_run_before_the_first_request(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], klein_weights: Path
) -> None:
    h = await serve(
        harness_factory, make_settings,
        model("klein", "flux2-klein", klein_weights, {**KLEIN_OPTIONS, "warmup_sizes": ["64x48"]}),
    )  # fmt: skip
    assert h.services.workers["klein"].engine.steps_run == 4  # one 4-step edit at start-up


def test_loading_keeps_the_configured_dtype(klein_weights: Path) -> None:
    """diffusers' ``from_pipe`` casts shared modules to float32 unless told otherwise; the
    bf16 transformer then ran in float32, about 7x slower on an H100."""
    import torch

    from retouch.engine.flux2_klein import Flux2KleinEngine

    engine = Flux2KleinEngine(
        model("klein", "flux2-klein", klein_weights, KLEIN_OPTIONS, dtype="bfloat16", device="cpu")
    )
    engine.load()
    for pipe in (engine.pipe, engine.inpaint):
        for name in ("transformer", "text_encoder", "vae"):
            dtypes = {p.dtype for p in getattr(pipe, name).parameters()}
            assert dtypes == {torch.bfloat16}, (name, dtypes)
    engine.close()


def test_serve_stops_with_the_fix_when_weights_are_missing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from retouch.cli import main

    missing = tmp_path / "no-such-weights"
    result = CliRunner().invoke(
        main,
        ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0",
         "--model", f"klein=flux2-klein:{missing}"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "'klein'" in result.output
    assert str(missing) in result.output
    assert "retouch models pull klein" in result.output
    assert "Traceback" not in result.output
