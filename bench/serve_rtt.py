"""The floor under the cluster path's added latency: one Serve handle call of a method that
does nothing (the echo replica's ``describe``), timed from a driver, the way a front calls,
on both transports (``cluster.transport``: Serve's gRPC channel, or Ray actor calls).

``bench/cluster.py`` reports what the Ray backend adds to a whole edit compared with the local
backend; this measures Ray Serve alone (router, actor call, replica, reply) on the same kind of
single-node cluster, so the two can be compared on the machine at hand. Ray binds every
interface: run it inside a loopback-only network namespace (as root):

    unshare --net sh -c 'ip link set lo up && exec python bench/serve_rtt.py [--calls 200]'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import config_text  # noqa: E402
from tests.raycluster import RayCluster  # noqa: E402

from retouch.cluster import deploy  # noqa: E402
from retouch.config import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if [n for _, n in socket.if_nameindex()] != ["lo"]:
        sys.exit("run inside a loopback-only network namespace (see the docstring)")
    root = Path(tempfile.mkdtemp(prefix="rtbench-rtt-"))
    cluster = RayCluster(root, str(ROOT / "src"))
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
    try:
        cluster.start(head_resources={"fake_gpu": 1}, worker_resources=None)
        config = root / "ray.toml"
        config.write_text(config_text(root / "data", "ray", cluster.address, 1, 0))
        settings = load_settings(config)
        deploy.connect(settings)
        deploy.deploy(settings)
        model = settings.models[0]
        # One transport after the other: a front uses one, and with calls interleaved the
        # actor calls' background work lands in the gRPC calls' time.
        handles = {t: deploy.front_handle(model, load_settings(config, cluster={"transport": t}))
                   for t in ("grpc", "actor")}  # fmt: skip

        async def timed() -> dict[str, list[float]]:
            for handle in handles.values():
                for _ in range(20):  # warm-up: router, replica, connections
                    await handle.describe.remote()
            times: dict[str, list[float]] = {t: [] for t in handles}
            for transport, handle in handles.items():
                for _ in range(args.calls):
                    started = time.perf_counter()
                    await handle.describe.remote()
                    times[transport].append((time.perf_counter() - started) * 1000)
            return times

        print(f"Serve handle call of a no-op method, {args.calls} calls per transport, one at a "
              f"time, {os.cpu_count()} CPUs:")  # fmt: skip
        for transport, times in asyncio.run(timed()).items():
            times.sort()
            print(f"  {transport:5}: median {statistics.median(times):.2f} ms, "
                  f"p90 {times[int(0.9 * len(times))]:.2f} ms, min {times[0]:.2f} ms")  # fmt: skip
    finally:
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    main()
