"""Hostile connections against ``retouch serve`` under a 1,024 open-files limit.

Starts the real server (``python -m retouch serve``, echo engine) in a child process whose
RLIMIT_NOFILE is 1,024 soft and hard, then on loopback:

1. slow loris: 20 connections send a request head one header every 0.5 s; reports how many the
   server closed, and after how long (the header deadline, ``server.header_timeout_s``);
2. half-open flood: opens N connections (default 1,100) that each send half a request head and
   stop, then times ``GET /healthz`` on fresh connections (p50 / p99 / failures).

Bounded and self-stopping: every phase has a deadline and the server is terminated at the end.

    python bench/hostile.py [--half-open 1100] [--probes 50] [--header-timeout 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(port: int) -> float | None:
    """Seconds for one GET /healthz on a fresh connection; None if it failed."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            sock.settimeout(5)
            ok = sock.recv(65536).startswith(b"HTTP/1.1 200")
    except OSError:
        return None
    return time.perf_counter() - started if ok else None


def start_server(port: int, data_dir: str, header_timeout: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RETOUCH_SERVER__HEADER_TIMEOUT_S": str(header_timeout)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "retouch", "serve", "--port", str(port), "--data-dir", data_dir,
         "--model", "echo=echo"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while healthz(port) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("retouch serve did not start")
        time.sleep(0.1)
    return proc


def slow_loris(port: int, count: int, limit_s: float) -> list[float]:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    started = time.monotonic()
    closed: dict[int, float] = {}
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
    while len(closed) < count and time.monotonic() - started < limit_s:
        for i, sock in enumerate(socks):
            if i in closed:
                continue
            try:
                sock.send(b"X-Slow: 1\r\n")
                while sock.recv(65536):
                    pass
                closed[i] = time.monotonic() - started  # recv returned b"": closed by the server
            except BlockingIOError:
                continue
            except OSError:
                closed[i] = time.monotonic() - started
        time.sleep(0.5)
    for sock in socks:
        sock.close()
    return sorted(closed.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-open", type=int, default=1100)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--header-timeout", type=float, default=5.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.half_open + 200)), hard))
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc = start_server(port, data_dir, args.header_timeout)
        try:
            closed = slow_loris(port, 20, limit_s=args.header_timeout * 3 + 10)
            print(f"slow loris: {len(closed)}/20 connections closed by the server; "
                  f"first after {closed[0]:.1f} s, last after {closed[-1]:.1f} s "
                  f"(header_timeout_s={args.header_timeout})" if closed else
                  "slow loris: 0/20 connections closed by the server")  # fmt: skip
            socks = []
            for _ in range(args.half_open):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                socks.append(sock)
            time.sleep(0.5)
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            times = [healthz(port) for _ in range(args.probes)]
            ok = sorted(t * 1000 for t in times if t is not None)
            print(f"/healthz with {args.half_open} half-open connections (server limit 1,024 "
                  f"open files): {len(ok)}/{args.probes} answered 200"
                  + (f", p50 {statistics.median(ok):.1f} ms, p99 "
                     f"{ok[min(len(ok) - 1, int(len(ok) * 0.99))]:.1f} ms" if ok else ""))  # fmt: skip
            for sock in socks:
                sock.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
