"""Helpers for tests that start real server processes: free loopback ports, readiness polls
and stopping exactly the processes a test started (by PID, never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, grpc_offset: int | None = None) -> list[int]:
    """``count`` loopback ports that are free now; with ``grpc_offset`` each ``port + offset``
    is free too (SeaweedFS puts every gRPC listener at HTTP port + 10000)."""
    found: list[int] = []
    for _ in range(500):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if grpc_offset is not None and (port + grpc_offset > 65535 or not port_is_free(port + grpc_offset)):
            continue
        if port not in found:
            found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError("no free loopback ports")


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen[bytes], *, grace: float = 10.0, group: bool = False) -> None:
    """SIGTERM to the process we started, then SIGKILL (to its own group with ``group``,
    for a leader started with ``start_new_session``) after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)
