"""One cluster per test session: SeaweedFS, a private PostgreSQL (the accounts database both
fronts share), a Ray head and a second node (one fake GPU each), two replicas of the echo
engine (one per node), one replica of the ``slow`` echo (no fake GPU: jobs that stay on their
replica for seconds), and two ``retouch serve`` fronts with the same config. Runs only inside the loopback-only namespace (see tests/test_cluster_suite.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.postgres import PrivatePostgres
from tests.processes import free_ports, stop, wait_until
from tests.raycluster import RayCluster, replica_pids
from tests.seaweed import SeaweedS3

ROOT = Path(__file__).resolve().parents[2]
ENGINE_STEPS = 8
ENGINE_DELAY_S = 0.8
SLOW_DELAY_S = 8.0
SLOW_STEPS = 40


def only_loopback() -> bool:
    # if_nameindex asks this process's network namespace (/sys/class/net may be the host's).
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def cluster_config(
    root: Path, ray_address: str, s3: SeaweedS3, database_url: str, name: str, transport: str = "grpc"
) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
data_dir = "{root / name}"
database_url = "{database_url}"
log_format = "json"

[queue]
max_queue = 2
deadline_s = 60

[cluster]
backend = "ray"
address = "{ray_address}"
deploy_timeout_s = 300
transport = "{transport}"

[storage]
backend = "s3"
signing_keys = ["cluster-test-signing-key"]

[storage.s3]
endpoint_url = "{s3.url}"
bucket = "{s3.bucket}"
addressing_style = "path"

[[models]]
name = "echo"
engine = "echo"
replicas = 2
cpus_per_replica = 0
ray_resources = {{ fake_gpu = 1 }}
options = {{ delay_s = {ENGINE_DELAY_S}, steps = {ENGINE_STEPS} }}

[[models]]
name = "slow"
engine = "echo"
replicas = 1
cpus_per_replica = 0
options = {{ delay_s = {SLOW_DELAY_S}, steps = {SLOW_STEPS} }}
""")
    return path


class Front:
    def __init__(self, name: str, config: Path, env: dict[str, str]) -> None:
        (self.port,) = free_ports(1)
        self.name = name
        self.config = config
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"{config.stem}-{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retouch", "serve", "--config", str(config), "--port", str(self.port)],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"front {self.name} exited:\n{self.log.read_text()[-4000:]}")
            return httpx2.get(f"{self.url}/readyz", timeout=5).status_code == 200

        try:
            wait_until(ready, timeout=360, what=f"front {self.name}", interval=0.3)
        except TimeoutError:
            raise AssertionError(f"front {self.name} not ready:\n{self.log.read_text()[-4000:]}") from None

    def stop(self) -> None:
        stop(self.proc, grace=15)


@dataclass
class Cluster:
    ray: RayCluster
    s3: SeaweedS3
    postgres: PrivatePostgres
    env: dict[str, str]
    a: Front
    b: Front
    replicas_before_b: list[int]
    fronts: list[Front]
    """Every front started (the session stops them all), restarted ones included."""

    def replica_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.ray.log_files())

    def start_front(self, name: str, config: Path) -> Front:
        front = Front(name, config, self.env)
        self.fronts.append(front)
        front.wait_ready()
        return front


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not only_loopback():  # never let Ray, S3 or the fronts reach a routable interface
        pytest.fail("tests/cluster runs only inside the loopback-only namespace that "
                    "tests/test_cluster_suite.py creates")
    root = tmp_path_factory.mktemp("cluster")
    s3 = SeaweedS3(root / "s3")
    ray = RayCluster(root / "ray", str(ROOT / "src"))
    postgres = PrivatePostgres()
    fronts: list[Front] = []
    try:
        s3.start()
        database_url = postgres.start()
        ray.start(head_resources={"fake_gpu": 1}, worker_resources={"fake_gpu": 1})
        env = {**ray.env, **s3.env(), "AWS_CONFIG_FILE": "/nonexistent",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}  # fmt: skip
        a = Front("a", cluster_config(root, ray.address, s3, database_url, "front-a"), env)
        fronts.append(a)
        a.wait_ready()
        before = sorted(replica_pids("echo", "echo"))
        # The same config from a second front: submitting it again must restart nothing. It
        # calls the replicas over the other transport (a front's own choice), so every test
        # through b (the contract suite's live_server ones too) runs on Ray actor calls.
        b = Front("b", cluster_config(root, ray.address, s3, database_url, "front-b", "actor"), env)
        fronts.append(b)
        b.wait_ready()
        yield Cluster(ray, s3, postgres, env, a, b, before, fronts)
    finally:
        for front in fronts:
            front.stop()
        ray.stop()
        ray.remove()
        postgres.stop()
        s3.stop()


class RemoteFront:
    """A front over a real socket in the shapes the contract tests use: ``echo`` (async SDK +
    HTTP client, like ``conftest.Harness``) and ``live_server`` (``url``, sync ``sdk()``)."""

    def __init__(self, url: str) -> None:
        import openai

        self.url = self.base_url = url
        self.http = httpx2.AsyncClient(base_url=url, timeout=120)
        self.sdk = openai.AsyncOpenAI(api_key="sk-test", base_url=f"{url}/v1",
                                      http_client=self.http, max_retries=0)  # fmt: skip

    def sync_sdk(self, **kwargs: object) -> object:
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", "sk-test")
        return openai.OpenAI(base_url=f"{self.url}/v1", http_client=httpx2.Client(timeout=120),
                             **kwargs)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
async def echo(cluster: Cluster) -> RemoteFront:
    """The contract tests' ``echo`` app, here a front whose engine runs on the Ray cluster."""
    return RemoteFront(cluster.a.url)


class _LiveFront:
    def __init__(self, url: str) -> None:
        self.url = self.base_url = url
        self._front = RemoteFront(url)

    def sdk(self, **kwargs: object) -> object:
        return self._front.sync_sdk(**kwargs)


@pytest.fixture
def live_server(cluster: Cluster) -> _LiveFront:
    return _LiveFront(cluster.b.url)
