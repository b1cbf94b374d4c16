"""``retouch serve`` and ``retouch`` CLI commands as real child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.waiting import wait_until

SRC_DIR = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETOUCH_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def retouch(*args: str) -> str:
    """Run ``retouch ARGS`` in a child process; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "retouch", *args], env=_env(), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


class ServeProcess:
    """``retouch serve`` on 127.0.0.1 with the echo engine."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.port = _free_port()
        self.log = data_dir / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retouch", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir), "--database-url", database_url,
             "--model", "echo=echo"],
            env=_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> ServeProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"retouch serve exited:\n{self.log.read_text()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, interval=0.05)
        except TimeoutError:
            raise RuntimeError(f"retouch serve did not get ready:\n{self.log.read_text()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
