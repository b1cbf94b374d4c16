"""Non-model overhead of an edit, against the floor of decoding and encoding the pixels.

Starts the real server (uvicorn, one process pinned to CPU 0) serving the ``echo`` engine, which
returns its input unchanged, and sends 1024x1024 PNG edits asking for PNG ``b64_json`` from a
client pinned to CPU 1. In the same run, on CPU 0, it times the floor with the same libraries
the server uses: decode the input PNG (Pillow), encode the output PNG (fpng), base64
(pybase64). Prints medians, the server's non-model time and the ratio.

    python bench/overhead.py [--requests 30] [--image photo|smooth]
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

import httpx
import numpy as np
import pybase64
from PIL import Image

from retouch.imaging.encode import encode


def synthetic_image(kind: str, size: int = 1024) -> np.ndarray:
    """Synthetic 'smooth' render or 'photo'-like noisy image (limits doc §4.0)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack(
        [128 + 100 * np.sin(6 * x + 2 * y), 128 + 100 * np.cos(5 * y - x), 128 + 90 * np.sin(4 * (x + y))],
        axis=2,
    )
    for _ in range(12):
        cx, cy, r = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * (rng.random(3) * 160 - 80)
    if kind == "photo":
        for scale in (8, 32, 128):
            small = rng.normal(0, 12, (size // scale, size // scale, 3)).astype(np.float32)
            img += np.asarray(Image.fromarray(small[..., 0]).resize((size, size), Image.BICUBIC))[..., None]
        img += rng.normal(0, 9, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def floor_pass(png: bytes) -> dict[str, float]:
    """One decode + encode + base64 with the server's libraries, timed per stage (ms)."""
    t0 = time.perf_counter()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    t1 = time.perf_counter()
    out = encode(pixels, "png")
    t2 = time.perf_counter()
    pybase64.b64encode(out)
    t3 = time.perf_counter()
    ms = {"decode": (t1 - t0) * 1000, "encode": (t2 - t1) * 1000, "base64": (t3 - t2) * 1000}
    ms["total"] = sum(ms.values())
    return ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--image", choices=("photo", "smooth"), default="photo")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[0], cpus[-1]
    png = encode(synthetic_image(args.image), "png")
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="retouch-bench-")
    env = {
        **os.environ,
        "RETOUCH_MODELS": '[{"name": "echo", "engine": "echo", "family": "native"}]',
        "RETOUCH_QUEUE__IMAGING_THREADS": "1",
        "RETOUCH_LOG_LEVEL": "warning",
    }
    cmd = ["taskset", "-c", str(server_cpu), sys.executable, "-m", "retouch", "serve",
           "--port", str(port), "--data-dir", data_dir]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:
            for _ in range(1200):  # up to 2 minutes on a loaded machine
                try:
                    if client.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            files = {"image": ("in.png", png, "image/png")}
            data = {"model": "echo", "prompt": "return it", "output_format": "png"}
            wall, server_ms = [], []
            floor_runs: list[dict[str, float]] = []
            # Interleave server requests and floor passes so both see the same background load.
            for i in range(args.requests + 3):
                os.sched_setaffinity(0, {client_cpu})
                t0 = time.perf_counter()
                r = client.post(f"{base}/v1/images/edits", files=files, data=data)
                elapsed = time.perf_counter() - t0
                r.raise_for_status()
                os.sched_setaffinity(0, {server_cpu})
                floor = floor_pass(png)
                if i >= 3:  # warm-up
                    wall.append(elapsed * 1000)
                    server_ms.append(float(r.headers["openai-processing-ms"]))
                    floor_runs.append(floor)
    finally:
        server.terminate()
        server.wait(10)
    floor = {k: statistics.median(f[k] for f in floor_runs) for k in floor_runs[0]}
    app_ms = statistics.median(server_ms)
    wall_ms = statistics.median(wall)
    print(f"input: {args.image} 1024x1024 PNG, {len(png) / 1e6:.2f} MB; output PNG b64_json; "
          f"{args.requests} requests; server on CPU {server_cpu}, client on CPU {client_cpu}")  # fmt: skip
    print(f"floor (same libraries, CPU {server_cpu}): decode {floor['decode']:.1f} ms + encode "
          f"{floor['encode']:.1f} ms + base64 {floor['base64']:.1f} ms = {floor['total']:.1f} ms")  # fmt: skip
    print(f"server non-model time (openai-processing-ms, median): {app_ms:.1f} ms")
    print(f"client wall time incl. loopback transfer (median): {wall_ms:.1f} ms")
    print(f"ratio server/floor: {app_ms / floor['total']:.2f}  (goal <= 1.5; non-model <= 80 ms)")


if __name__ == "__main__":
    main()
