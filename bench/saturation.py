"""Saturation: a real server held at 2.4x its capacity, every refused client retrying at once.

Starts ``retouch serve`` (uvicorn, SQLite accounts in a temp folder, serving open on loopback)
with the ``echo`` engine simulating ``--run-s`` of work per edit, ``workers`` = 1 and
``max_queue`` = ``--queue``, so capacity = 1 + queue. Then ``ceil(2.4 x capacity)`` clients
send 1024x1024 PNG edits for ``--seconds``, each retrying the moment it gets a 429, while a
separate prober process times ``GET /healthz`` every 20 ms. It stops by itself.

What it checks (the request-path bars):
* only 200 and 429 answers, every 429 with ``Retry-After`` and ``retry-after-ms``;
* 429s answered before any decode: the ledger holds a row for every request that got past the
  queue ticket (the gate admits it before its images are decoded), so rows == 200s and no row
  has status 429; plus the 429 latency (client wall time and the server's own
  ``openai-processing-ms``), p99 goal < 20 ms;
* ``/healthz`` p99 <= 10 ms;
* the server's RSS at the start (after warm-up) and the end, and its peak.

The server runs on the first half of the CPUs, the clients and the prober on the other half.

    python bench/saturation.py [--seconds 75] [--queue 4] [--run-s 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from retouch.imaging.encode import encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(http: httpx.Client, tries: int = 300) -> None:
    """Until the server's ``/readyz`` answers 200 (it is still starting: refused connections)."""
    for _ in range(tries):
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main_thread_cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of the server's main thread (its event loop)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main_thread(pid: int) -> tuple[float, int]:
    """CPU seconds of the server's main thread and the times it was preempted (involuntary
    context switches: another thread or process wanted its CPU)."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    preempted = next(int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("nonvoluntary_ctxt_switches"))  # fmt: skip
    return sum(main_thread_cpu(pid)), preempted


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def probe(base: str, seconds: float, out: multiprocessing.Queue[list[float]]) -> None:
    """In its own process, so the load client's event loop does not colour the numbers, and
    ahead of the load clients on their shared CPU (nice -5 where allowed): it stands for a
    health checker on another machine, and would otherwise time its own wait for that CPU."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    times: list[float] = []
    end = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=10) as http:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            http.get("/healthz").raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    out.put(times)


async def load(base: str, clients: int, seconds: float, png: bytes) -> list[dict[str, float]]:
    results: list[dict[str, float]] = []
    end = time.monotonic() + seconds
    files = {"image": ("in.png", png, "image/png")}
    data = {"model": "echo", "prompt": "return it"}

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = await http.post("/v1/images/edits", files=files, data=data)
            await r.aread()
            results.append({
                "status": r.status_code,
                "wall_ms": (time.perf_counter() - t0) * 1000,
                "server_ms": float(r.headers.get("openai-processing-ms", "nan")),
                "retry_after": float("retry-after" in r.headers and "retry-after-ms" in r.headers),
            })  # fmt: skip

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return results


def photo(size: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 100 * np.cos(5 * y - x),
                    128 + 90 * np.sin(4 * (x + y))], axis=2)  # fmt: skip
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--queue", type=int, default=4, help="max_queue (capacity = 1 + queue)")
    parser.add_argument("--run-s", type=float, default=0.5, help="simulated engine time per edit")
    parser.add_argument("--factor", type=float, default=2.4, help="clients / capacity")
    args = parser.parse_args()

    capacity = 1 + args.queue
    clients = math.ceil(args.factor * capacity)
    png = encode(photo(), "png")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="retouch-saturation-")
    options = {"delay_s": args.run_s, "steps": 4}
    env = {
        **os.environ,
        "RETOUCH_MODELS": json.dumps([{"name": "echo", "engine": "echo", "options": options}]),
        "RETOUCH_QUEUE__MAX_QUEUE": str(args.queue),
        "RETOUCH_LOG_LEVEL": "warning",
    }
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = set(cpus[: len(cpus) // 2] or cpus), set(cpus[len(cpus) // 2 :])
    cmd = ["taskset", "-c", ",".join(map(str, sorted(server_cpus))), sys.executable, "-m",
           "retouch", "serve", "--port", str(port), "--data-dir", data_dir]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            wait_ready(http)
            for _ in range(3):  # warm-up: imports, first decode/encode, tokenizer
                http.post("/v1/images/edits", files={"image": ("in.png", png, "image/png")},
                          data={"model": "echo", "prompt": "warm"}).raise_for_status()  # fmt: skip
        os.sched_setaffinity(0, client_cpus)  # the clients stay off the server's CPUs
        rss_start = rss_mb(server.pid)
        loop_before, started = main_thread(server.pid), time.monotonic()
        probes: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(base, args.seconds, probes))
        prober.start()
        results = asyncio.run(load(base, clients, args.seconds, png))
        loop_after, elapsed = main_thread(server.pid), time.monotonic() - started
        loop = ((loop_after[0] - loop_before[0]) / elapsed, loop_after[1] - loop_before[1])
        health = probes.get(timeout=60)
        prober.join(10)
        time.sleep(1.0)  # let the last ledger writes land
        rss_end, rss_peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        try:
            _, log = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, log = server.communicate()
    report(args, capacity, clients, png, results, health, data_dir, (rss_start, rss_end, rss_peak),
           loop, log)  # fmt: skip


def report(
    args: argparse.Namespace, capacity: int, clients: int, png: bytes,
    results: list[dict[str, float]], health: list[float], data_dir: str,
    rss: tuple[float, float, float], loop: tuple[float, int], log: str,
) -> None:  # fmt: skip
    statuses: dict[int, int] = {}
    for r in results:
        statuses[int(r["status"])] = statuses.get(int(r["status"]), 0) + 1
    refused = [r for r in results if r["status"] == 429]
    served = [r for r in results if r["status"] == 200]
    with sqlite3.connect(Path(data_dir) / "accounts.db") as db:
        rows = dict(db.execute("SELECT status, count(*) FROM usage_records GROUP BY status").fetchall())
    warmup = 3
    print(f"server: echo engine {args.run_s} s/edit, workers 1, max_queue {args.queue} -> capacity "
          f"{capacity}; {clients} clients ({clients / capacity:.1f}x) retrying at once for "
          f"{args.seconds:.0f} s; input 1024x1024 PNG {len(png) / 1e6:.2f} MB")  # fmt: skip
    print(f"answers: {dict(sorted(statuses.items()))}  (only 200 and 429: "
          f"{'yes' if set(statuses) <= {200, 429} else 'NO'})")  # fmt: skip
    print(f"429 with Retry-After + retry-after-ms: {sum(int(r['retry_after']) for r in refused)}"
          f" of {len(refused)}")  # fmt: skip
    print(f"ledger rows by status: {rows}; 200s answered {len(served)} (+{warmup} warm-up) -> "
          f"{'no 429 reached the decoder' if rows.get(429, 0) == 0 and rows.get(200, 0) == len(served) + warmup else 'MISMATCH'}")  # fmt: skip
    wall = [r["wall_ms"] for r in refused]
    srv = [r["server_ms"] for r in refused]
    print(f"429 latency: client wall p50 {pct(wall, 50):.1f} / p99 {pct(wall, 99):.1f} ms; "
          f"server p50 {pct(srv, 50):.1f} / p99 {pct(srv, 99):.1f} ms  (goal p99 < 20 ms)")  # fmt: skip
    print(f"200 latency: client wall p50 {pct([r['wall_ms'] for r in served], 50):.0f} ms")
    print(f"/healthz: {len(health)} probes, p50 {pct(health, 50):.1f} / p99 {pct(health, 99):.1f} / "
          f"max {max(health):.1f} ms  (goal p99 <= 10 ms)")  # fmt: skip
    print(f"server event loop: busy {100 * loop[0]:.0f}% of the run, preempted {loop[1]} times "
          f"(other processes on its CPU); load average at the end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"server RSS: start {rss[0]:.0f} MB, end {rss[1]:.0f} MB, peak {rss[2]:.0f} MB")
    tracebacks = log.count("Traceback")
    print(f"server log: {tracebacks} tracebacks, {len(log.splitlines())} lines")


if __name__ == "__main__":
    main()
