"""Cross-request batching on vs off: throughput at 8 concurrent clients, and the lone request's
latency cost (the batch window it waits in).

Tiny random-weight pipelines on the CPU (FLUX.2-klein, FLUX.1-Kontext and SD inpainting, the
families that batch; klein's edits each with their own reference image), served in-process (``build_app``, the official ``openai`` SDK over an ASGI
transport), 64x64 edits, every client with its own prompt and image:

* off: ``workers = 1`` (today's behaviour: one pipeline call per request);
* on: ``workers = batch_max_size = 8``, ``batch_window_ms`` (default 50).

On a real GPU the gain depends on how far batch 1 is from saturating the device (engines.md
§10); tiny CPU pipelines mostly measure the per-call overhead that batching amortises. GPU
figures: unmeasured here (no GPU was lent).

    python bench/batching.py [--requests 32] [--clients 8] [--window-ms 50] [--steps 4]
                             [--engines flux2-klein,flux-kontext,sd-inpaint]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def measure(engine: str, folder: Path, data: Path, options: dict[str, Any], workers: int,
                  args: argparse.Namespace) -> tuple[float, float, list[int]]:  # fmt: skip
    import httpx2
    import numpy as np
    import openai
    from asgi_lifespan import LifespanManager
    from tests.conftest import encode_image, gradient

    from retouch.bootstrap import build_app
    from retouch.config import ModelSettings, load_settings

    settings = load_settings(None, data_dir=data, queue={"max_queue": 64}, models=[ModelSettings(
        name="m", engine=engine, weights=str(folder), options=options, workers=workers,  # type: ignore[arg-type]
        accept_license="non-commercial")])  # fmt: skip
    app = build_app(settings)
    images = [encode_image(np.roll(gradient((64, 64)), 7 * i, axis=1)) for i in range(args.clients)]
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=120) as manager:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app), base_url="http://b",
                                  timeout=600)  # fmt: skip
        sdk = openai.AsyncOpenAI(api_key="sk-bench", base_url="http://b/v1", http_client=http, max_retries=0)

        async def edit(i: int) -> None:
            await sdk.images.edit(model="m", image=("in.png", images[i % len(images)], "image/png"),
                                  prompt=f"edit number {i}")  # fmt: skip

        await edit(0)  # warm-up
        lone = []
        for i in range(5):
            start = time.perf_counter()
            await edit(i)
            lone.append(time.perf_counter() - start)
        queue = list(range(args.requests))

        async def client() -> None:
            while queue:
                await edit(queue.pop())

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - start
        await http.aclose()
        engine_obj = app.state.services.workers["m"].engine
        sizes = list(engine_obj.coalescer.sizes) if engine_obj.coalescer else []
    return args.requests / elapsed, statistics.median(lone), sizes


def main() -> None:
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging
    from tests.engines import tiny_pipelines

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window-ms", type=float, default=50)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--engines", default="flux2-klein,flux-kontext,sd-inpaint")
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    savers = {"flux-kontext": tiny_pipelines.save_tiny_kontext, "sd-inpaint": tiny_pipelines.save_tiny_sd,
              "flux2-klein": tiny_pipelines.save_tiny_klein}  # fmt: skip
    common = {"max_pixels": 64 * 64, "min_pixels": 0, "steps": args.steps, "seed": 0}
    family = {"flux2-klein": {"max_sequence_length": 64, "text_encoder_out_layers": [1]}}
    print(f"{args.requests} requests from {args.clients} concurrent clients, 64x64, {args.steps} steps, "
          f"1 torch thread, window {args.window_ms:g} ms")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            base = {**common, **family.get(engine, {})}
            folder = savers[engine](Path(tmp) / engine)
            off = asyncio.run(measure(engine, folder, Path(tmp) / f"{engine}-off", base, 1, args))
            on_options = {**base, "batch_max_size": args.clients, "batch_window_ms": args.window_ms}
            on = asyncio.run(measure(engine, folder, Path(tmp) / f"{engine}-on", on_options, args.clients, args))
            groups = list(on[2][6:])  # after the warm-up and the 5 lone requests
            print(f"{engine}: throughput off {off[0]:.2f} img/s, on {on[0]:.2f} img/s "
                  f"(x{on[0] / off[0]:.2f}); mean batch {statistics.mean(groups):.1f}; "
                  f"lone request off {off[1] * 1000:.0f} ms, on {on[1] * 1000:.0f} ms "
                  f"(+{(on[1] - off[1]) * 1000:.0f} ms, {100 * (on[1] / off[1] - 1):+.0f} %); "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
