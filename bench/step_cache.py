"""Quality cost of step caching (the ``cache`` engine option) on tiny random-weight pipelines.

For each engine and cache setting: the same edit (same seed, 28 steps, 64x64) with and without
the cache, through retouch's engines (``build_engine`` -> ``load`` -> ``run``, weights loaded
from a saved folder). Prints the PSNR of the cached image against the uncached one and the
share of denoiser passes that really ran the last block (the rest were skipped by the
first-block cache or predicted by TaylorSeer). CPU wall time is printed too, but tiny
pipelines say nothing about GPU speed; that is unmeasured here.

Random weights change much more per step than trained ones, so thresholds that skip on real
models skip less here; read the PSNR as "how far the cached trajectory drifts", not as a
promise of image quality.

    python bench/step_cache.py [--steps 28]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS: list[tuple[str, dict[str, Any] | None]] = [
    ("flux2-klein", {"kind": "taylorseer", "cache_interval": 3}),
    ("flux-kontext", {"kind": "first-block", "threshold": 0.2}),
    ("flux-kontext", {"kind": "first-block", "threshold": 0.5}),
    ("flux-kontext", {"kind": "taylorseer", "cache_interval": 3}),
    ("flux-kontext", {"kind": "taylorseer", "cache_interval": 5, "max_order": 2}),
    ("qwen-image-edit", {"kind": "first-block", "threshold": 0.2}),
    ("qwen-image-edit", {"kind": "first-block", "threshold": 0.5}),
    ("qwen-image-edit", {"kind": "taylorseer", "cache_interval": 3}),
]


class NoProgress:
    cancelled = False

    def check(self) -> None:
        return None

    def partial(self, image: Any, *, output_index: int = 0) -> None:
        return None


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as qwen_plus
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging
    from tests.conftest import gradient
    from tests.engines import tiny_pipelines

    from retouch.config import ModelSettings
    from retouch.engine.registry import build_engine
    from retouch.engine.types import EditJob

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    qwen_plus.VAE_IMAGE_SIZE, qwen_plus.CONDITION_IMAGE_SIZE = 64 * 64, 56 * 56  # engines.md 7.4

    job = EditJob(prompt="make it blue", images=(gradient((64, 64)),), mask=None, size=(64, 64), n=1,
                  quality="high", input_fidelity="low", background="auto", partial_images=0)  # fmt: skip
    base = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0, "steps": args.steps}
    extra = {"flux2-klein": {"text_encoder_out_layers": [1]}}
    savers = {"flux2-klein": lambda r: tiny_pipelines.save_tiny_klein(r, layers=2),
              "flux-kontext": tiny_pipelines.save_tiny_kontext, "qwen-image-edit": tiny_pipelines.save_tiny_qwen}  # fmt: skip

    def engine(kind: str, folder: Path, cache: dict[str, Any] | None) -> Any:
        options = {**base, **extra.get(kind, {}), **({"cache": cache} if cache else {})}
        built = build_engine(ModelSettings(name="m", engine=kind, weights=str(folder), options=options,  # type: ignore[arg-type]
                                           accept_license="non-commercial"))  # fmt: skip
        built.load()
        return built

    def tail_projection(built: Any) -> Any:
        t = built.pipe.transformer
        blocks = getattr(t, "single_transformer_blocks", None) or t.transformer_blocks
        return next(m for m in blocks[-1].attn.modules() if isinstance(m, torch.nn.Linear))

    print(f"{'engine':16s} {'cache':58s} {'PSNR dB':>8s} {'full passes':>12s} {'CPU s':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[str, Path] = {}
        plain: dict[str, tuple[Any, int, float]] = {}
        for kind, cache in SETTINGS:
            if kind not in folders:
                folders[kind] = savers[kind](Path(tmp) / kind)
            for setting in ([None] if kind not in plain else []) + [cache]:
                built = engine(kind, folders[kind], setting)
                calls = [0]
                tail_projection(built).register_forward_pre_hook(lambda *a, c=calls: c.__setitem__(0, c[0] + 1))
                start = time.perf_counter()
                image = built.run(job, NoProgress()).images[0]
                seconds = time.perf_counter() - start
                if setting is None:
                    plain[kind] = (image, calls[0], seconds)
                    print(f"{kind:16s} {'none':58s} {'-':>8s} {calls[0]:>5d}/{calls[0]:<6d} {seconds:6.2f}")
                    continue
                ref, full, _ = plain[kind]
                print(f"{kind:16s} {str(setting):58s} {psnr(image, ref):8.2f} {calls[0]:>5d}/{full:<6d} {seconds:6.2f}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
