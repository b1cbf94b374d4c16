"""The floor under the cluster path's added latency: Serve handle calls timed from a driver, the
way a front calls, one at a time, on a single-node cluster (own temp dir and ports).

Two calls: ``describe``, a method that does nothing (Serve alone: router, transport, replica,
reply), and ``stream`` of a small plain job on an engine that takes no time (what a front's
job costs besides the engine). These set-ups, interleaved in short blocks so that the host's
drift lands on all of them alike:

* ``retouch``: what a front uses (``deploy.front_handle``, replicas with ``deploy.REPLICA_ENV``):
  Serve's gRPC channel, the router on the caller's loop, replica methods on the replica's loop;
* ``serve-default``: the same gRPC channel with Serve's default threads (a router thread in
  the caller, a user-code thread in the replica), on a second application;
* ``actor``: ``cluster.transport = "actor"`` (Ray actor calls), otherwise as ``retouch``;
* ``retouch describe after 200 ms idle``: the first call, each time after the whole path has
  been idle as long as a 200 ms engine keeps it (what ``bench/cluster.py``'s jobs meet);
* ``grpc-raw``: the transport alone, no Serve: a gRPC (asyncio) server in a child process
  answering the same calls' shapes with the same bytes (``describe``: one reply; ``stream``:
  the pickled job in, two replies out), so the difference is what Serve's request path costs.

``bench/cluster.py`` reports what the Ray backend adds to a whole edit compared with the local
backend. Ray binds every interface: run it inside a loopback-only network namespace (as root):

    unshare --net sh -c 'ip link set lo up && exec python bench/serve_rtt.py [--blocks 40]'
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
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

from tests.processes import free_ports  # noqa: E402
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


IDLE_S = 0.2
_RAW = "/retouch.bench.Raw/"  # the bare gRPC service: bytes in, bytes out, no Serve


def _raw_server(port: int, ready: Any) -> None:
    import grpc

    async def describe(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> Any:
        yield pickle.dumps(("start", "raw"))
        yield request  # the job's size back, as the output's pixels would be

    def same(data: bytes) -> bytes:
        return data

    handlers = grpc.method_handlers_generic_handler("retouch.bench.Raw", {
        "Describe": grpc.unary_unary_rpc_method_handler(describe, same, same),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, same, same),
    })  # fmt: skip

    async def serve() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def raw_calls(port: int, job: EditJob) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The ``grpc-raw`` calls (made inside the running loop): pickled in, pickled out."""
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    describe = channel.unary_unary(_RAW + "Describe")
    stream = channel.unary_stream(_RAW + "Stream")
    small = pickle.dumps({"info": None, "replica": "raw"})
    job_bytes = pickle.dumps(((job, "bench", 60.0), {}), protocol=5)

    async def one() -> Any:
        return pickle.loads(await describe(small))

    async def two() -> None:
        async for item in stream(job_bytes):
            pickle.loads(item)

    return {"describe": one, "stream": two}


def deploy_apps(settings: Settings) -> None:
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = deploy.serve_config(settings)
    env = config["applications"][1]["deployments"][0]["ray_actor_options"]["runtime_env"]["env_vars"]
    env.pop("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD")  # Serve's default: a user-code thread
    serve_start(proxy_location="Disabled").deploy_apps(ServeDeploySchema.model_validate(config))
    deploy.wait_running(settings, 300)


async def timed(settings: Settings, blocks: int, raw_port: int) -> dict[str, list[float]]:
    echo, default = settings.models
    actor = settings.model_copy(update={"cluster": settings.cluster.model_copy(update={"transport": "actor"})})
    handles = {
        "retouch": deploy.front_handle(echo, settings),
        "serve-default": deploy.front_handle(default, settings, router_on_this_loop=False),
        "actor": deploy.front_handle(echo, actor),
    }
    job = EditJob(prompt="x", images=(np.zeros((64, 64, 3), np.uint8),), mask=None, size=(64, 64), n=1,
                  quality="high", input_fidelity="low", background="auto", partial_images=0)  # fmt: skip

    def calls(handle: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
        streaming = handle.options(stream=True)

        async def stream() -> None:
            async for _ in streaming.stream.remote(job, "bench", 60.0):
                pass

        return {"describe": lambda: handle.describe.remote(), "stream": stream}

    variants = {f"{name:13} {call:8}": fn for name, h in handles.items() for call, fn in calls(h).items()}
    variants.update({f"{'grpc-raw':13} {call:8}": fn for call, fn in raw_calls(raw_port, job).items()})
    # The same call after the whole path has been idle as long as a 200 ms engine keeps it.
    after_idle = f"{'retouch':13} {'describe':8} after {IDLE_S * 1000:.0f} ms idle"
    variants[after_idle] = variants[f"{'retouch':13} {'describe':8}"]
    for fn in variants.values():
        for _ in range(20):  # warm-up: routers, replicas, connections
            await fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(blocks):
        for key, fn in variants.items():
            for _ in range(5):
                if key == after_idle:
                    await asyncio.sleep(IDLE_S)
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
    (raw_port,) = free_ports(1)
    spawn = multiprocessing.get_context("spawn")  # before Ray: nothing of it in the child
    ready = spawn.Event()
    raw = spawn.Process(target=_raw_server, args=(raw_port, ready), daemon=True)
    raw.start()
    if not ready.wait(60):
        sys.exit("the bare gRPC server did not start")
    cluster = RayCluster(root, str(ROOT / "src"))
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
    try:
        cluster.start(head_resources={"fake_gpu": len(APPS)}, worker_resources=None)
        config = root / "ray.toml"
        config.write_text(config_text(root / "data", cluster.address))
        settings = load_settings(config)
        deploy.connect(settings)
        deploy_apps(settings)
        times = asyncio.run(timed(settings, args.blocks, raw_port))
        print(f"Serve handle calls, one at a time, {5 * args.blocks} per variant, interleaved, "
              f"{os.cpu_count()} CPUs (ms):")  # fmt: skip
        for key, values in times.items():
            values.sort()
            print(f"  {key}: median {statistics.median(values):5.2f}, p90 {values[int(0.9 * len(values))]:5.2f}, "
                  f"min {values[0]:5.2f}")  # fmt: skip
    finally:
        cluster.stop()
        cluster.remove()
        raw.terminate()
        raw.join(10)


if __name__ == "__main__":
    main()
