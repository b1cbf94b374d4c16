"""A real Ray cluster for tests: a head and a second node (``ray start --block``), each with
its own temp dir and ports, stopped by their own PIDs (SIGTERM with a zero drain, then SIGKILL
of the group) - never ``ray stop``, which stops every Ray process on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.processes import free_ports, stop, wait_until


def ray_env(extra_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # Replicas import retouch from this checkout (a deployment ships it in the image).
        "PYTHONPATH": os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p),
        "RAY_DEDUP_LOGS": "0",
        # A loopback-only test cluster: no token auth, whatever ~/.ray/auth_token a local
        # ray.init() elsewhere on the machine left (else the drivers' and the GCS's differ).
        "RAY_AUTH_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",  # so "Ray runtime started." reaches the log file at once
    })  # fmt: skip
    return env


class RayNode:
    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        # Ray's socket paths live under the temp dir and must stay below 108 bytes (AF_UNIX).
        self.root = Path(tempfile.mkdtemp(prefix=f"rt-{name}-", dir="/tmp"))
        self.name = name
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, args: list[str], cpus: int, resources: dict[str, float], workers: int) -> None:
        node_manager, object_manager, agent, agent_grpc, metrics, runtime_env = free_ports(6)
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray, "start", "--block", *args,
            "--temp-dir", str(self.root / "tmp"), "--num-cpus", str(cpus),
            "--resources", json.dumps(resources), "--object-store-memory", "150000000",
            "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
            # Own worker-port ranges per node, below the ephemeral range free_ports draws from.
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 999),
        ]  # fmt: skip
        log = (self.root / "ray-start.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def started(self) -> bool:
        """True once running; True as well when ``ray start`` exited (``_wait`` tells)."""
        if self.proc is not None and self.proc.poll() is not None:
            return True
        return b"Ray runtime started" in (self.root / "ray-start.log").read_bytes()

    def log_tail(self) -> str:
        return (self.root / "ray-start.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace=20, group=True)
            self.proc = None

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def log_files(self) -> list[Path]:
        return [p for p in (self.root / "tmp").rglob("*") if p.is_file() and p.suffix in (".log", ".err", ".out")]


class NodeStartTimedOut(RuntimeError):
    """``ray start`` gave up waiting for its raylet to register (a fixed 30 s inside Ray),
    which a busy 2-core host can exceed; a fresh node, on fresh ports, is then tried once."""


class RayCluster:
    def __init__(self, root: Path, pythonpath: str) -> None:
        self.root = root
        self.env = ray_env(pythonpath)
        (self.gcs_port,) = free_ports(1)
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.head = RayNode(root, "head", self.env)
        self.worker = RayNode(root, "node2", self.env)

    def start(self, *, head_resources: dict[str, float], worker_resources: dict[str, float] | None) -> None:
        self._retrying(self._start_head, head_resources)
        if worker_resources is not None:
            self._retrying(self._start_worker, worker_resources)

    def _retrying(self, start: Callable[..., None], resources: dict[str, float]) -> None:
        try:
            start(resources, fresh=False)
        except NodeStartTimedOut as exc:
            print(f"{exc}; starting it again", file=sys.stderr)
            start(resources, fresh=True)

    def _start_head(self, resources: dict[str, float], *, fresh: bool) -> None:
        if fresh:
            self.head.stop()
            self.head.remove()
            self.head = RayNode(self.root, "head", self.env)
            (self.gcs_port,) = free_ports(1)
            self.address = f"127.0.0.1:{self.gcs_port}"
        (client_port,) = free_ports(1)
        self.head.start(
            ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
             "--ray-client-server-port", str(client_port), "--node-ip-address", "127.0.0.1"],
            cpus=2, resources=resources, workers=20000,
        )  # fmt: skip
        # ``ray start --block`` prints this once the node runs; polling ``ray status`` instead
        # costs a Python start-up per poll on a busy 2-core machine.
        self._wait(self.head, "the Ray head")

    def _start_worker(self, resources: dict[str, float], *, fresh: bool) -> None:
        if fresh:
            self.worker.stop()
            self.worker.remove()
            self.worker = RayNode(self.root, "node2", self.env)
        self.worker.start(["--address", self.address, "--node-ip-address", "127.0.0.1"],
                          cpus=1, resources=resources, workers=21000)  # fmt: skip
        self._wait(self.worker, "the second Ray node")

    def _wait(self, node: RayNode, what: str) -> None:
        try:
            wait_until(node.started, timeout=180, what=what, interval=0.2)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{node.log_tail()}") from None
        if node.proc is None or node.proc.poll() is not None:
            tail = node.log_tail()
            if "timed out during startup" in tail:
                raise NodeStartTimedOut(f"ray start for {what} timed out during start-up")
            raise RuntimeError(f"ray start for {what} exited; its log ends:\n{tail}")

    def stop(self) -> None:
        # The joining node first, so it does not spend its time reconnecting to a dead head.
        self.worker.stop()
        self.head.stop()

    def remove(self) -> None:
        self.head.remove()
        self.worker.remove()

    def log_files(self) -> list[Path]:
        return self.head.log_files() + self.worker.log_files()


def replica_pids(app: str, deployment: str) -> list[int]:
    """Serve replica processes, by their title ``ray::ServeReplica:APP:DEPLOYMENT``."""
    title = f"ray::ServeReplica:{app}:{deployment}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(title):
            pids.append(int(entry.name))
    return pids
