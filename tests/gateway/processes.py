"""A second ``retouch serve`` as a separate process: the real upstream of the relay tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.accounts.processes import _env, _free_port

UPSTREAM_TOML = """
[[models]]
name = "echo"
engine = "echo"

[[models]]
name = "slow"
engine = "echo"
options = { steps = 40, delay_s = 30.0 }

[[models]]
name = "stepped"
engine = "echo"
options = { steps = 8, delay_s = 0.8 }
"""


class RetouchUpstream:
    """``retouch serve`` on 127.0.0.1 with an echo model (also serving OpenAI's names, so
    ``dall-e-2`` answers with links), a ``slow`` one (30 s, for cancellation) and a
    ``stepped`` one (partial images spread over 0.8 s)."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "upstream.toml"
        config.write_text(UPSTREAM_TOML)
        self.log = data_dir / "upstream.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retouch", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir), "--config", str(config)],
            env=_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> RetouchUpstream:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream retouch exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"upstream retouch did not get ready:\n{self.log.read_text()}")

    def ready(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=5).json()
        return doc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
