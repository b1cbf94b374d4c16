"""Scale-out of the Ray backend: throughput at 1, 2, 4 and 8 engine replicas, and the latency
the cluster path adds per request compared with the local backend.

The echo engine stands in for a GPU with a fixed engine time (``--engine-ms``, default 200 ms,
spent sleeping, so a replica costs no CPU while it "computes"). One Ray head (own temp dir and
ports) with N fake GPUs; one ``retouch serve`` front attached to it; this process is the
deployer and changes the replica count in place between runs. Clients send small PNG edits over
HTTP with 2 x N requests in flight. A second front with the local backend gives the baseline
latency: one request at a time, same engine time, alternating between the two fronts so that
the host's drift over the run lands on both alike.

Ray binds every interface: run it inside a loopback-only network namespace (as root):

    unshare --net sh -c 'ip link set lo up && exec python bench/cluster.py'   # make bench-cluster
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import free_ports, stop, wait_until  # noqa: E402
from tests.raycluster import RayCluster  # noqa: E402

from retouch.cluster import deploy  # noqa: E402
from retouch.config import load_settings  # noqa: E402


def config_text(
    data_dir: Path, backend: str, address: str, replicas: int, engine_ms: int, transport: str = "grpc"
) -> str:
    return f"""
data_dir = "{data_dir}"
log_level = "warning"
[queue]
max_queue = 64
[cluster]
backend = "{backend}"
address = "{address}"
deploy = false
transport = "{transport}"
[[models]]
name = "echo"
engine = "echo"
replicas = {replicas}
cpus_per_replica = 0
ray_resources = {{ fake_gpu = 1 }}
options = {{ delay_s = {engine_ms / 1000}, steps = 1 }}
"""


def start_front(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "retouch", "serve", "--config", str(config), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=(config.with_suffix(".log")).open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=300, what="front")
    return proc, url


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


async def edit(client: httpx.AsyncClient, image: bytes) -> bool:
    """One small edit; whether it succeeded."""
    reply = await client.post("/v1/images/edits", data={"model": "echo", "prompt": "x"},
                              files={"image": ("a.png", image, "image/png")})  # fmt: skip
    return reply.status_code == 200


async def load(url: str, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    """Closed loop: ``concurrency`` clients, each sending its next edit when one returns."""
    image = png()
    done, failed, latencies = 0, 0, []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                if await edit(client, image):
                    done += 1
                    latencies.append(time.perf_counter() - t)
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, latencies, failed


async def alternate(urls: list[str], seconds: float) -> list[list[float]]:
    """One request at a time, taking the fronts in turn: each front's latencies."""
    image = png()
    latencies: list[list[float]] = [[] for _ in urls]
    clients = [httpx.AsyncClient(base_url=url, timeout=120) for url in urls]
    try:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            for client, times in zip(clients, latencies, strict=True):
                t = time.perf_counter()
                if await edit(client, image):
                    times.append(time.perf_counter() - t)
    finally:
        for client in clients:
            await client.aclose()
    return latencies


def paired_medians(local_url: str, ray_url: str, seconds: float) -> tuple[float, float]:
    asyncio.run(alternate([local_url, ray_url], min(2.0, seconds)))  # warm-up
    local, ray = asyncio.run(alternate([local_url, ray_url], 2 * seconds))
    return statistics.median(local), statistics.median(ray)


def measure(url: str, concurrency: int, seconds: float) -> tuple[float, float, int]:
    asyncio.run(load(url, concurrency, min(2.0, seconds)))  # warm-up (connections, routers)
    started = time.monotonic()
    done, latencies, failed = asyncio.run(load(url, concurrency, seconds))
    elapsed = time.monotonic() - started
    return done / elapsed, statistics.median(latencies), failed


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications["echo"].deployments["echo"].replica_states
    return int(states.get("RUNNING", 0)) if len(states) == 1 else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,2,4,8")
    parser.add_argument("--engine-ms", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--transport", choices=["grpc", "actor"], default="grpc",
                        help="cluster.transport of the Ray front")  # fmt: skip
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    if [n for _, n in socket.if_nameindex()] != ["lo"]:
        sys.exit("run inside a loopback-only network namespace (see the docstring)")
    root = Path(tempfile.mkdtemp(prefix="rtbench-"))
    cluster = RayCluster(root, str(ROOT / "src"))
    fronts: list[subprocess.Popen[bytes]] = []
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
    try:
        cluster.start(head_resources={"fake_gpu": max(counts)}, worker_resources=None)
        ray_config = root / "ray.toml"
        ray_config.write_text(config_text(root / "ray", "ray", cluster.address, counts[0], args.engine_ms,
                                          args.transport))  # fmt: skip
        settings = load_settings(ray_config)
        deploy.connect(settings)
        deploy.deploy(settings)
        front, ray_url = start_front(ray_config, cluster.env)
        fronts.append(front)
        local_config = root / "local.toml"
        local_config.write_text(config_text(root / "local", "local", "auto", 1, args.engine_ms))
        local, local_url = start_front(local_config, cluster.env)
        fronts.append(local)

        local_median, ray_median = paired_medians(local_url, ray_url, args.seconds)
        rows = []
        for n in counts:
            deploy.deploy(load_settings(ray_config, models=[
                {**settings.models[0].model_dump(), "replicas": n}]))  # in place: no restart
            wait_until(lambda n=n: running_replicas() == n, timeout=300, what=f"{n} replicas")
            rate, median, failed = measure(ray_url, 2 * n, args.seconds)
            rows.append((n, rate, median, failed))
        base = rows[0][1]
        print(f"\nengine time {args.engine_ms} ms; {os.cpu_count()} CPUs; {args.seconds:g} s per run; "
              f"transport {args.transport}\n")  # fmt: skip
        print("| replicas | clients | edits/s | speedup | efficiency | median latency | errors |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n, rate, median, failed in rows:
            print(f"| {n} | {2 * n} | {rate:.2f} | {rate / base:.2f}x | {rate / base / n:.2f} | "
                  f"{median * 1000:.0f} ms | {failed} |")
        print(f"\nmedian latency, one request at a time: local backend {local_median * 1000:.1f} ms, "
              f"Ray backend {ray_median * 1000:.1f} ms, added {1000 * (ray_median - local_median):.1f} ms")
    finally:
        for proc in fronts:
            stop(proc)
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    main()
