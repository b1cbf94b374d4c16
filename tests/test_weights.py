"""Weights resolution and ``retouch models pull`` (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retouch.cli import main
from retouch.config import ModelSettings
from retouch.engine import weights
from retouch.engine.types import EngineLoadError


def test_only_the_diffusers_layout_is_fetched() -> None:
    repo = [
        "README.md", "flux-2-klein-4b.safetensors", "model_index.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bin",
        "text_encoder/model.onnx", "tokenizer/vocab.json",
    ]  # fmt: skip
    assert weights.files_to_fetch(repo) == [
        "model_index.json", "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin",  # the only format that folder has
        "tokenizer/vocab.json",
    ]  # fmt: skip


def test_local_folder_resolves_and_a_bad_one_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    good = ModelSettings(name="k", engine="flux2-klein", weights=str(tmp_path))  # type: ignore[call-arg]
    assert weights.resolve_weights(good) == tmp_path.resolve()
    bad = good.model_copy(update={"weights": str(tmp_path / "missing")})
    with pytest.raises(EngineLoadError, match="model_index.json is missing"):
        weights.resolve_weights(bad)


def test_sd_has_no_default_weights() -> None:
    sd = ModelSettings(name="sd", engine="sd-inpaint")  # type: ignore[call-arg]
    with pytest.raises(EngineLoadError, match="no weights configured"):
        weights.resolve_weights(sd)


def test_pull_downloads_the_configured_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []

    def fake_pull(repo: str, *, revision: str | None = None) -> Path:
        calls.append((repo, revision))
        return tmp_path

    monkeypatch.setattr(weights, "pull_weights", fake_pull)
    runner = CliRunner()
    result = runner.invoke(main, ["models", "pull", "klein", "--model", "klein=flux2-klein"])
    assert result.exit_code == 0, result.output
    assert calls == [("black-forest-labs/FLUX.2-klein-4B", None)]
    result = runner.invoke(main, ["models", "pull", "Qwen/Qwen-Image-Edit-2509", "--revision", "main"])
    assert result.exit_code == 0, result.output
    assert calls[-1] == ("Qwen/Qwen-Image-Edit-2509", "main")


def test_pull_refuses_unknown_names_and_skips_local_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["models", "pull", "nope"])
    assert result.exit_code != 0
    assert "no configured model named 'nope'" in result.output
    result = runner.invoke(main, ["models", "pull", "k", "--model", f"k=sd-inpaint:{tmp_path}"])
    assert result.exit_code == 0
    assert "nothing to download" in result.output
