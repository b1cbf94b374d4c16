"""retouch's overhead around a diffusers pipeline: HTTP end to end vs calling the pipeline.

One run, one tiny random-weight FLUX.2-klein pipeline (real 8x VAE downsampling, so 512x512 is
1024 latent tokens like the real model), the same prompt, image and seed both ways:

* direct: ``Flux2KleinPipeline(prompt, image=[PIL], 512x512, 4 steps)`` in this process;
* retouch: ``retouch serve --config`` in a subprocess (real uvicorn socket on 127.0.0.1), the
  official ``openai`` client sending the PNG and reading back the b64 PNG.

Both use the same number of torch threads. Rounds alternate; medians are printed with the
ratio (goal <= 1.05) and the absolute overhead per image.

    python bench/diffusers_overhead.py [--rounds 7] [--threads 1] [--size 512]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

OPTIONS = 'text_encoder_out_layers = [1]\nmax_sequence_length = 64\n'
PROMPT = "make the sky purple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(weights: Path, data: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    config = data / "retouch.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\nlog_level = "warning"\n'
        f'[[models]]\nname = "klein"\nengine = "flux2-klein"\nweights = "{weights}"\n'
        f"[models.options]\n{OPTIONS}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src"),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "retouch", "serve", "--config", str(config)], env=env
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"retouch serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("retouch serve did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    import numpy as np
    import openai
    import torch
    from PIL import Image
    from tests.engines.tiny_pipelines import save_tiny_klein

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="retouch-bench-"))
    weights = save_tiny_klein(work, vae_levels=4)

    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(weights, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    pixels = (rng.random((args.size, args.size, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    png = buf.getvalue()

    def direct() -> float:
        started = time.perf_counter()
        pipe(prompt=PROMPT, image=[image], height=args.size, width=args.size,
             num_inference_steps=4, guidance_scale=1.0, text_encoder_out_layers=(1,),
             max_sequence_length=64, generator=torch.Generator().manual_seed(0))  # fmt: skip
        return time.perf_counter() - started

    port = free_port()
    proc = start_server(weights, work, port, args.threads)
    try:
        wait_ready(port, proc)
        client = openai.OpenAI(api_key="bench", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)

        def over_http() -> float:
            started = time.perf_counter()
            result = client.images.edit(model="klein", image=("in.png", png, "image/png"),
                                        prompt=PROMPT, size=f"{args.size}x{args.size}")  # type: ignore[arg-type]  # fmt: skip
            assert result.data
            assert result.data[0].b64_json
            return time.perf_counter() - started

        for _ in range(2):  # warm-up: first calls allocate and fill caches
            direct()
            over_http()
        direct_s, http_s = [], []
        for _ in range(args.rounds):
            direct_s.append(direct())
            http_s.append(over_http())
    finally:
        proc.terminate()
        proc.wait(30)

    d, h = statistics.median(direct_s), statistics.median(http_s)
    print(f"tiny FLUX.2-klein, {args.size}x{args.size}, 4 steps, {args.threads} torch thread(s), "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    print(f"  diffusers pipeline, direct call : {d:.3f} s/image")
    print(f"  retouch over HTTP (openai SDK)  : {h:.3f} s/image")
    print(f"  ratio retouch / direct          : {h / d:.3f}  (goal <= 1.05)")
    print(f"  overhead                        : {(h - d) * 1000:.0f} ms/image")


if __name__ == "__main__":
    main()
