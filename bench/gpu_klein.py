"""FLUX.2-klein-4B at real size, random weights: seconds per image, diffusers vs retouch, and the
accelerations behind retouch's engine options.

What it builds: the FLUX.2-klein-4B architecture (the diffusers configs of
black-forest-labs/FLUX.2-klein-4B: 4B transformer, Qwen3-4B text encoder, FLUX.2 VAE) with random
weights initialised directly on the device, and a byte-level tokenizer made in code (no download).
Random weights give meaningless pictures but the same compute as the real model.

What it measures, one 1024x1024 edit with one 1024x1024 reference image, 4 steps (the OpenAI
edit klein serves), median of ``--runs`` after a warm-up:

1. plain diffusers: ``Flux2KleinPipeline(prompt, image=[ref], 1024x1024, 4 steps)``;
2. retouch: ``Flux2KleinEngine.run(job)`` on the same pipeline (parameter mapping, hooks for
   cancellation and previews, pixels out, resize/composite);
3. retouch with each acceleration, applied through the engine's options in this order (they
   change the shared transformer in place, so each row includes the previous compile state
   where noted): attention backends ``_native_cudnn`` / ``_native_flash`` /
   ``_native_efficient`` (each reset to ``native`` after), ``compile='blocks'``
   (``compile_repeated_blocks(fullgraph=True)``, compile time printed separately), then
   ``quantize='fp8'`` (torchao, if importable) on top of the compiled blocks.

GPU (the lead's command, H100, about 4-5 minutes including imports and weight init):

    python3 bench/gpu_klein.py

CPU smoke test (tiny scale, seconds):

    python bench/gpu_klein.py --scale 0.05 --size 128 --device cpu --dtype float32 --runs 1 \\
        --accelerations none
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# black-forest-labs/FLUX.2-klein-4B transformer/config.json
TRANSFORMER = {
    "patch_size": 1, "in_channels": 128, "out_channels": None, "num_layers": 5,
    "num_single_layers": 20, "attention_head_dim": 128, "num_attention_heads": 24,
    "joint_attention_dim": 7680, "timestep_guidance_channels": 256, "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": False,
}  # fmt: skip
# text_encoder/config.json (Qwen3-4B)
TEXT_ENCODER = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1_000_000,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False,
}  # fmt: skip
TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)  # 3 x 2560 = the transformer's joint_attention_dim
# vae/config.json: AutoencoderKLFlux2's defaults are the FLUX.2 VAE (128-256-512-512, 32 latents)
VAE: dict[str, Any] = {}
# scheduler/scheduler_config.json (dynamic shifting; speed-neutral)
SCHEDULER = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
    "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
    "max_image_seq_len": 4096, "time_shift_type": "exponential",
}  # fmt: skip
ROW_COST_S = {"compile": 90.0, "fp8": 90.0}
"""Rough H100 seconds of a row, compile included (attention rows: 15)."""
PROMPT = "replace the background with a sunny beach, keep the person unchanged"


def scaled(scale: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], tuple[int, ...]]:
    """The real configs (scale 1) or a proportionally shrunk model for smoke tests."""
    if scale >= 1:
        return TRANSFORMER, TEXT_ENCODER, VAE, TEXT_ENCODER_OUT_LAYERS
    te_layers = max(3, round(36 * scale))
    te_heads = max(1, round(32 * scale))
    te_hidden = max(128, round(2560 * scale / 128) * 128)
    text = {**TEXT_ENCODER, "num_hidden_layers": te_layers, "num_attention_heads": te_heads,
            "num_key_value_heads": 1, "hidden_size": te_hidden,
            "intermediate_size": max(256, round(9728 * scale))}  # fmt: skip
    transformer = {**TRANSFORMER, "num_layers": max(1, round(5 * scale)),
                   "num_single_layers": max(1, round(20 * scale)),
                   "num_attention_heads": max(1, round(24 * scale)),
                   "joint_attention_dim": 3 * te_hidden}  # fmt: skip
    vae = {"block_out_channels": (32, 32, 32, 32)}
    out_layers = (te_layers // 4, te_layers // 2, 3 * te_layers // 4)
    return transformer, text, vae, out_layers


def build_pipeline(scale: float, device: str, dtype: Any, workdir: Path) -> tuple[Any, tuple[int, ...]]:
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from tests.engines.tiny_pipelines import qwen_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tx, te, vae_cfg, out_layers = scaled(scale)
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device: seconds, not minutes
        transformer = Flux2Transformer2DModel(**tx).to(dtype)
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**te)).to(dtype)
        vae = AutoencoderKLFlux2(**vae_cfg).to(dtype)
    pipe = Flux2KleinPipeline(
        transformer=transformer.eval(), text_encoder=text_encoder.eval(), vae=vae.eval(),
        tokenizer=qwen_tokenizer(workdir / "tokenizer"),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in transformer.parameters()) / 1e9
    te_params = sum(p.numel() for p in text_encoder.parameters()) / 1e9
    print(f"built: transformer {params:.2f}B params, text encoder {te_params:.2f}B, on {device} {dtype}")
    return pipe, out_layers


def timed(fn: Callable[[], Any], runs: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(first call, median of ``runs`` more) in seconds."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return first, statistics.median(times)


class _Progress:
    cancelled = False

    def check(self) -> None:
        return None

    def partial(self, image: Any, *, output_index: int = 0) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = the real 4B model")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--accelerations", default="cudnn,flash,efficient,compile,fp8",
                        help="comma list, or 'none'")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=340.0,
                        help="skip a row that would likely end after this many seconds")  # fmt: skip
    args = parser.parse_args()
    started = time.monotonic()

    import numpy as np
    import torch
    from PIL import Image

    from retouch.config import ModelSettings
    from retouch.engine.flux2_klein import Flux2KleinEngine
    from retouch.engine.types import EditJob

    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    import diffusers

    print(f"diffusers {diffusers.__version__}; imports done at {time.monotonic() - started:.0f} s")
    pipe, out_layers = build_pipeline(args.scale, args.device, dtype, Path(tempfile.mkdtemp()))
    print(f"weights ready at {time.monotonic() - started:.0f} s")

    size = args.size
    rng = np.random.default_rng(0)
    reference = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    ref_image = Image.fromarray(reference)
    rows: list[tuple[str, float, float]] = []

    def report(name: str, first: float, median: float) -> None:
        rows.append((name, first, median))
        print(f"  {name:<44} first {first:7.2f} s   median {median:7.3f} s/image", flush=True)

    # 1. Plain diffusers.
    def plain() -> Any:
        return pipe(prompt=PROMPT, image=[ref_image], height=size, width=size,
                    num_inference_steps=4, guidance_scale=1.0, text_encoder_out_layers=out_layers,
                    generator=torch.Generator("cpu").manual_seed(0))  # fmt: skip

    report("diffusers Flux2KleinPipeline", *timed(plain, args.runs, sync))

    # 2. retouch's engine path, options as a deployment would set them.
    job = EditJob(prompt=PROMPT, images=(reference,), mask=None, size=(size, size), n=1,
                  quality="high", input_fidelity="low", background="auto", partial_images=0)  # fmt: skip

    def engine_with(options: dict[str, Any]) -> Flux2KleinEngine:
        base = {"text_encoder_out_layers": list(out_layers), "min_pixels": 0,
                "max_pixels": max(size * size, 64 * 64)}  # fmt: skip
        settings = ModelSettings(name="klein", engine="flux2-klein", device=args.device,  # type: ignore[call-arg]
                                 options={**base, **options})  # fmt: skip
        engine = Flux2KleinEngine(settings)
        engine.adopt(pipe)
        return engine

    def run_engine(engine: Flux2KleinEngine) -> Callable[[], Any]:
        return lambda: engine.run(job, _Progress())

    baseline = engine_with({})
    report("retouch Flux2KleinEngine.run", *timed(run_engine(baseline), args.runs, sync))

    # 3. Accelerations through the engine options.
    wanted = [] if args.accelerations == "none" else args.accelerations.split(",")
    backends = {"cudnn": "_native_cudnn", "flash": "_native_flash", "efficient": "_native_efficient"}
    for name in wanted:
        elapsed = time.monotonic() - started
        if elapsed + ROW_COST_S.get(name, 15) > args.budget_s:
            print(f"  {name}: skipped ({elapsed:.0f} s gone; it would likely end past "
                  f"--budget-s {args.budget_s:.0f})")  # fmt: skip
            continue
        try:
            if name in backends:
                if not cuda:
                    print(f"  {name}: skipped (CUDA only)")
                    continue
                engine = engine_with({"attention_backend": backends[name]})
                report(f"retouch + attention_backend={backends[name]}",
                       *timed(run_engine(engine), args.runs, sync))  # fmt: skip
                pipe.transformer.set_attention_backend("native")
            elif name == "compile":
                t0 = time.perf_counter()
                engine = engine_with({"compile": "blocks"})
                first, median = timed(run_engine(engine), args.runs, sync)
                report("retouch + compile=blocks (first = compile)", first, median)
                print(f"    compile + first call took {time.perf_counter() - t0:.1f} s")
            elif name == "fp8":
                if not cuda:
                    print("  fp8: skipped (CUDA only)")
                    continue
                engine = engine_with({"quantize": "fp8"})
                label = "retouch + quantize=fp8" + (" (+ compiled blocks)" if "compile" in wanted else "")
                report(label, *timed(run_engine(engine), args.runs, sync))
            else:
                print(f"  {name}: unknown acceleration")
        except Exception as exc:  # one failing row must not lose the others
            print(f"  {name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
            if name in backends:
                pipe.transformer.set_attention_backend("native")

    base = next(m for n, _, m in rows if n.startswith("diffusers"))
    print(f"\nsummary ({size}x{size}, 1 reference, 4 steps, {args.dtype}, scale {args.scale}):")
    for name, _first, median in rows:
        print(f"  {name:<44} {median:7.3f} s/image   x{base / median:5.2f} vs diffusers")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
