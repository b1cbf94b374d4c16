"""What a relay adds: the same edit sent straight to an upstream retouch and through a second
retouch that relays it (``engine = "upstream"``), interleaved, on loopback.

Starts two ``retouch serve`` processes: the upstream (the ``echo`` engine, which returns its
input) and the gateway (a relay to it). Sends 1024x1024 PNG edits asking for PNG ``b64_json``
(about 2.5 MB up, 3.4 MB of base64 back) alternately to each and prints the medians, the
difference (the relay's cost: one more hop of both bodies, its checks and its ledger row) and
the ratio. With ``--url`` the upstream answers with links and the gateway mirrors them.

    python bench/relay_overhead.py [--requests 30] [--url]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from overhead import synthetic_image  # bench/overhead.py, next to this script
from retouch.imaging.encode import encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(models: list[dict[str, object]], extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "RETOUCH_MODELS": json.dumps(models), "RETOUCH_LOG_LEVEL": "warning",
           "RETOUCH_STORAGE__ALLOW_URL_FOR_GPT_MODELS": "true", **(extra or {})}  # fmt: skip
    cmd = [sys.executable, "-m", "retouch", "serve", "--port", str(port),
           "--data-dir", tempfile.mkdtemp(prefix="retouch-bench-")]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{port}"


def wait_ready(client: httpx.Client, base: str) -> None:
    for _ in range(600):
        try:
            if client.get(f"{base}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--url", action="store_true", help="response_format=url (mirrored)")
    args = parser.parse_args()

    png = encode(synthetic_image("photo"), "png")
    upstream, up_url = serve([{"name": "echo", "engine": "echo", "family": "native"}])
    relay = {"name": "echo", "engine": "upstream", "family": "native",
             "upstream": {"base_url": f"{up_url}/v1"}}  # fmt: skip
    gateway, gw_url = serve([relay])
    try:
        with httpx.Client(timeout=120) as client:
            wait_ready(client, up_url)
            wait_ready(client, gw_url)
            files = {"image": ("in.png", png, "image/png")}
            data = {"model": "echo", "prompt": "return it", "output_format": "png"}
            if args.url:
                data["response_format"] = "url"
            times: dict[str, list[float]] = {"direct": [], "relayed": []}
            sizes: dict[str, int] = {}
            for i in range(args.requests + 3):
                for name, base in (("direct", up_url), ("relayed", gw_url)):
                    t0 = time.perf_counter()
                    r = client.post(f"{base}/v1/images/edits", files=files, data=data)
                    if args.url:
                        client.get(r.json()["data"][0]["url"]).raise_for_status()
                    elapsed = (time.perf_counter() - t0) * 1000
                    r.raise_for_status()
                    sizes[name] = len(r.content)
                    if i >= 3:  # warm-up
                        times[name].append(elapsed)
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(10)
    direct, relayed = (statistics.median(times[k]) for k in ("direct", "relayed"))
    mode = "url (mirrored by the gateway), link fetched" if args.url else "b64_json"
    print(f"input 1024x1024 PNG {len(png) / 1e6:.2f} MB; output {mode}, {sizes['relayed'] / 1e6:.2f} MB "
          f"body; {args.requests} requests each, interleaved; {os.cpu_count()} CPUs shared by both servers")  # fmt: skip
    print(f"direct to the upstream (median wall): {direct:.1f} ms")
    print(f"through the relay      (median wall): {relayed:.1f} ms")
    print(f"relay adds: {relayed - direct:.1f} ms (ratio {relayed / direct:.2f})")


if __name__ == "__main__":
    main()
