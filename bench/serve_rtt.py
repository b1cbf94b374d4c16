"""The floor under the cluster path's added latency: Serve handle calls timed from a driver, the
way a front calls, one at a time, on a single-node cluster (own temp dir and ports).

Two calls: ``describe``, a method that does nothing (Serve alone: router, transport, replica,
reply), and ``stream`` of a small plain job on an engine that takes no time (what a front's
job costs besides the engine). Three set-ups, interleaved in short blocks so that the host's
drift lands on all of them alike:

* ``retouch``: what a front uses (``deploy.front_handle``, replicas with ``deploy.REPLICA_ENV``):
  Serve's gRPC channel, the router on the caller's loop, replica methods on the replica's loop;
* ``serve-default``: the same gRPC channel with Serve's default threads (a router thread in
  the caller, a user-code thread in the replica), on a second application;
* ``actor``: ``cluster.transport = "actor"`` (Ray actor calls), otherwise as ``retouch``.

``bench/cluster.py`` reports what the Ray backend adds to a whole edit compared with the local
backend. Ray binds every interface: run it inside a loopback-only network namespace (as root):

    unshare --net sh -c 'ip link set lo up && exec python bench/serve_rtt.py [--blocks 40]'
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.raycluster import RayCluster  # noqa: E402

from retouch.cluster import deploy  # noqa: E402
from retouch.config import Settings, load_settings  # noqa: E402
from retouch.engine.types import EditJob  # noqa: E402

APPS = ("echo", "echo-serve-default")  # the second one's replicas keep Serve's user-code thread


def config_text(data_dir: Path, address: str) -> str:
    models = "".join(f"""
[[models]]
name = "{name}"
engine = "echo"
cpus_per_replica = 0
ray_resources = {{ fake_gpu = 1 }}
options = {{ delay_s = 0, steps = 1 }}
""" for name in APPS)  # fmt: skip
    return f'data_dir = "{data_dir}"\nlog_level = "warning"\n[cluster]\nbackend = "ray"\naddress = "{address}"\n{models}'


def deploy_apps(settings: Settings) -> None:
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = deploy.serve_config(settings)
    env = config["applications"][1]["deployments"][0]["ray_actor_options"]["runtime_env"]["env_vars"]
    env.pop("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD")  # Serve's default: a user-code thread
    serve_start(proxy_location="Disabled").deploy_apps(ServeDeploySchema.model_validate(config))
    deploy.wait_running(settings, 300)


async def timed(settings: Settings, blocks: int) -> dict[str, list[float]]:
    echo, default = settings.models
    actor = settings.model_copy(update={"cluster": settings.cluster.model_copy(update={"transport": "actor"})})
    handles = {
        "retouch": deploy.front_handle(echo, settings),
        "serve-default": deploy.front_handle(default, settings, router_on_this_loop=False),
        "actor": deploy.front_handle(echo, actor),
    }
    job = EditJob(prompt="x", images=(np.zeros((64, 64, 3), np.uint8),), mask=None, size=(64, 64), n=1,
                  quality="auto", input_fidelity="low", background="auto", partial_images=0)  # fmt: skip

    def calls(handle: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
        streaming = handle.options(stream=True)

        async def stream() -> None:
            async for _ in streaming.stream.remote(job, "bench", 60.0):
                pass

        return {"describe": lambda: handle.describe.remote(), "stream": stream}

    variants = {f"{name:13} {call:8}": fn for name, h in handles.items() for call, fn in calls(h).items()}
    for fn in variants.values():
        for _ in range(20):  # warm-up: routers, replicas, connections
            await fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(blocks):
        for key, fn in variants.items():
            for _ in range(5):
                started = time.perf_counter()
                await fn()
                times[key].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks of 5 calls per variant")
    args = parser.parse_args()
    if [n for _, n in socket.if_nameindex()] != ["lo"]:
        sys.exit("run inside a loopback-only network namespace (see the docstring)")
    root = Path(tempfile.mkdtemp(prefix="rtbench-rtt-"))
    cluster = RayCluster(root, str(ROOT / "src"))
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
    try:
        cluster.start(head_resources={"fake_gpu": len(APPS)}, worker_resources=None)
        config = root / "ray.toml"
        config.write_text(config_text(root / "data", cluster.address))
        settings = load_settings(config)
        deploy.connect(settings)
        deploy_apps(settings)
        times = asyncio.run(timed(settings, args.blocks))
        print(f"Serve handle calls, one at a time, {5 * args.blocks} per variant, interleaved, "
              f"{os.cpu_count()} CPUs (ms):")  # fmt: skip
        for key, values in times.items():
            values.sort()
            print(f"  {key}: median {statistics.median(values):5.2f}, p90 {values[int(0.9 * len(values))]:5.2f}, "
                  f"min {values[0]:5.2f}")  # fmt: skip
    finally:
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    main()
