"""Where a generative model's weights live, and how to fetch them ahead of time.

``ModelSettings.weights`` is either a local diffusers folder (``model_index.json`` at its root)
or a Hugging Face hub id. Serving never downloads by default: a hub id resolves to its snapshot
in the local cache (``HF_HOME`` / ``HF_HUB_CACHE``), and a missing one fails at start-up with
the command that fetches it, ``retouch models pull NAME``. No torch import here, so the CLI can
pull weights without loading any model code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from retouch.config import ModelSettings
from retouch.engine.types import EngineLoadError

DEFAULT_WEIGHTS: dict[str, str | None] = {
    "flux2-klein": "black-forest-labs/FLUX.2-klein-4B",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit-2511",
    # SD inpainting weights are the operator's choice (several community copies exist).
    "sd-inpaint": None,
    "flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",  # gated on the hub: accept its licence
    "joyimage-edit": "jdopensource/JoyAI-Image-Edit-Diffusers",
    "longcat-image-edit": "meituan-longcat/LongCat-Image-Edit",
    "qwen-image-2.1": "Qwen/Qwen-Image-2.1",
}

# Files a diffusers folder never needs: other frameworks' formats and training leftovers.
# Root files other than model_index.json are skipped too: repositories such as FLUX.2-klein
# ship a single-file checkpoint there that duplicates the component folders (7.75 GB).
_SKIPPED = ("*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ot", "*non_ema*", "*.fp16.*")


def pull_hint(model: ModelSettings) -> str:
    return (
        f"retouch models pull {model.name} (with the same --config/--model options as "
        "'retouch serve')"
    )


def weights_id(model: ModelSettings) -> str:
    """The configured weights, or the family default; ``EngineLoadError`` if there is none."""
    weights = model.weights or DEFAULT_WEIGHTS.get(model.engine)
    if not weights:
        raise EngineLoadError(
            f"model {model.name!r} ({model.engine}) has no weights configured: set 'weights' to "
            "a diffusers folder or a Hugging Face id, e.g. "
            f"--model {model.name}={model.engine}:stable-diffusion-v1-5/stable-diffusion-inpainting"
        )
    return weights


def is_local(weights: str) -> bool:
    """A path (absolute, relative with a dot, home) or an existing folder, not a hub id."""
    return weights.startswith(("/", "./", "../", "~", ".\\")) or Path(weights).expanduser().is_dir()


def resolve_weights(model: ModelSettings, *, allow_download: bool = False) -> Path:
    """The local folder holding ``model``'s diffusers weights.

    Raises ``EngineLoadError`` naming the model, where it looked and how to fix it.
    """
    weights = weights_id(model)
    if is_local(weights):
        folder = Path(weights).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise EngineLoadError(
                f"model {model.name!r} ({model.engine}): no diffusers pipeline at {folder} "
                "(model_index.json is missing). Point 'weights' at a folder written by "
                "save_pretrained, or at a Hugging Face id and run: " + pull_hint(model)
            )
        return folder
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as exc:  # pragma: no cover - part of the diffusers extra
        raise EngineLoadError(
            f"model {model.name!r} needs huggingface_hub: pip install 'retouch[diffusers]'"
        ) from exc
    try:
        folder = Path(snapshot_download(weights, local_files_only=not allow_download))
    except Exception as exc:
        raise EngineLoadError(
            f"model {model.name!r} ({model.engine}): the weights {weights!r} are not in the "
            f"Hugging Face cache at {constants.HF_HUB_CACHE} ({type(exc).__name__}). "
            "Download them with: " + pull_hint(model)
        ) from exc
    if not (folder / "model_index.json").is_file():
        raise EngineLoadError(
            f"model {model.name!r} ({model.engine}): the cached snapshot of {weights!r} at "
            f"{folder} has no model_index.json (an incomplete download?). Fetch it again with: "
            + pull_hint(model)
        )
    return folder


def files_to_fetch(repo_files: Iterable[str]) -> list[str]:
    """The files of a diffusers repository worth downloading.

    Keeps model_index.json and the component folders; drops root-level extras, formats other
    than PyTorch, and ``.bin`` weights where the same folder has ``.safetensors``.
    """
    files = list(repo_files)
    with_safetensors = {f.rsplit("/", 1)[0] for f in files if f.endswith(".safetensors") and "/" in f}
    keep = []
    for name in files:
        if "/" not in name and name != "model_index.json":
            continue
        if any(fnmatch.fnmatch(name, pattern) for pattern in _SKIPPED):
            continue
        if name.endswith(".bin") and name.rsplit("/", 1)[0] in with_safetensors:
            continue
        keep.append(name)
    return keep


def pull_weights(weights: str, *, revision: str | None = None) -> Path:
    """Download a hub repository's diffusers files into the local cache; returns the folder."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(weights, revision=revision)
    wanted = files_to_fetch(files)
    if "model_index.json" not in wanted:
        raise ValueError(f"{weights!r} is not a diffusers pipeline repository (no model_index.json)")
    return Path(snapshot_download(weights, revision=revision, allow_patterns=wanted))
