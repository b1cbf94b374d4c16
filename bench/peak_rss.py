"""Peak memory of one maximal request: 16 input images at the per-request pixel ceiling.

Starts ``retouch serve`` with the ``echo`` engine, warms it up with a small edit, reads the
server's peak RSS (``VmHWM``), sends one request of 16 PNGs of 2048x2048 (16 x 4.19 MP =
``limits.max_request_pixels``, 67.1 MP), and reads the peak again. Prints the body size, the
decoded pixel bytes and the growth of the peak, against the bound that docs/request-path.md
derives (raw body + decoded pixels + one output).

    python bench/peak_rss.py [--images 16] [--side 2048]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def image(side: int, seed: int) -> bytes:
    """A smooth picture with a little noise: a few MB as PNG, like a render."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    phase = rng.random(3) * 6
    rgb = np.stack([128 + 100 * np.sin(5 * x + 3 * y + phase[0]),
                    128 + 100 * np.cos(4 * y - x + phase[1]),
                    128 + 90 * np.sin(3 * (x + y) + phase[2])], axis=2)  # fmt: skip
    rgb += rng.normal(0, 1.5, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=2048)
    args = parser.parse_args()
    pngs = [image(args.side, i) for i in range(args.images)]
    body_mb = sum(len(p) for p in pngs) / 1e6
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RETOUCH_MODELS": '[{"name": "echo", "engine": "echo"}]',
        "RETOUCH_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "retouch", "serve", "--port", str(port),
           "--data-dir", tempfile.mkdtemp(prefix="retouch-rss-")]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=base, timeout=300) as http:
            for _ in range(300):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            small = {"image": ("s.png", image(256, 99), "image/png")}
            http.post("/v1/images/edits", files=small, data={"model": "echo", "prompt": "warm"}).raise_for_status()
            before = status_mb(server.pid, "VmHWM")
            files = [("image[]", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
            t0 = time.perf_counter()
            r = http.post("/v1/images/edits", files=files,
                          data={"model": "echo", "prompt": "x", "size": "1024x1024"})  # fmt: skip
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            after = status_mb(server.pid, "VmHWM")
            rss_now = status_mb(server.pid, "VmRSS")
    finally:
        server.terminate()
        server.wait(20)
    pixels_mb = args.images * args.side * args.side * 3 / 1e6
    print(f"request: {args.images} PNGs of {args.side}x{args.side} "
          f"({args.images * args.side * args.side / 1e6:.1f} MP), body {body_mb:.1f} MB; "
          f"answered {r.status_code} in {elapsed:.1f} s")  # fmt: skip
    print(f"decoded pixels (RGB): {pixels_mb:.0f} MB; raw body: {body_mb:.0f} MB")
    print(f"server peak RSS: {before:.0f} MB after warm-up -> {after:.0f} MB "
          f"(+{after - before:.0f} MB); RSS afterwards {rss_now:.0f} MB")  # fmt: skip
    print(f"growth / (body + pixels): {(after - before) / (body_mb + pixels_mb):.2f}")


if __name__ == "__main__":
    main()
