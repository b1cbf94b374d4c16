"""A private PostgreSQL server for tests that start their own processes (the cluster suite):
its own data folder and port, on 127.0.0.1 of the caller's network namespace, stopped by the
PID of its own postmaster (never ``pg_ctl`` on someone else's data folder, never by name).

The shared server of ``.ci/postgres.sh`` listens on the host's loopback (fixed port 54329),
which a process inside the cluster suite's network namespace cannot reach; this one runs in
the namespace itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.processes import free_ports, wait_until


def postgres_bindir() -> Path | None:
    """The newest installed server binaries (Debian's layout, then PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent.parent.name)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    def __init__(self) -> None:
        # Unix socket paths must stay short (108 bytes), and the postgres account needs to
        # own the folder when we run as root (initdb refuses root).
        self.root = Path(tempfile.mkdtemp(prefix="rt-pg-", dir="/tmp"))
        self.data = self.root / "data"
        (self.port,) = free_ports(1)
        self.url = ""
        self.pid: int | None = None

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def start(self, database: str = "retouch") -> str:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries are missing (apt-get install postgresql)")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._as_owner([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                            "--auth=trust", "-E", "UTF8", "--no-instructions", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c max_connections=100 -c shared_buffers=16MB")  # fmt: skip
        subprocess.run(
            self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                            "-l", str(self.root / "server.log"), "-o", options, "start"]),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"
        return self.url

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)  # "fast" shutdown of our own postmaster
            pid = self.pid
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="PostgreSQL to stop")
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
