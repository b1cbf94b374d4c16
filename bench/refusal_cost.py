"""What one refusal costs the server: main-thread CPU per 429, per body size, and per /healthz.

Starts ``retouch serve`` (open mode, SQLite) on the first CPU with the ``echo`` engine,
``workers`` 1 and ``max_queue`` 0, takes the one slot with a 600 s edit, then sends
``--requests`` edits that are all refused (429 at the ``model`` field) from the other CPU, one
at a time, and reads the server's main-thread user and system time from
``/proc/PID/task/PID/stat`` before and after. The same for ``/healthz``, the cheapest request
there is (keep-alive). It stops by itself; loopback only.

This is the service time behind ``bench/saturation.py``'s tails: the retrying clients there
send refusals as fast as they can, so the server's core is busy for (rate x this cost).

    python bench/refusal_cost.py [--requests 400]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from retouch.imaging.encode import encode
from saturation import free_port, main_thread_cpu, photo, wait_ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpus = cpus[0], set(cpus[1:] or cpus)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    options = {"delay_s": 600, "steps": 600}
    env = {
        **os.environ,
        "RETOUCH_MODELS": json.dumps([{"name": "echo", "engine": "echo", "options": options}]),
        "RETOUCH_QUEUE__MAX_QUEUE": "0",
        "RETOUCH_LOG_LEVEL": "warning",
    }
    data_dir = tempfile.mkdtemp(prefix="retouch-refusal-")
    cmd = ["taskset", "-c", str(server_cpu), sys.executable, "-m", "retouch", "serve",
           "--port", str(port), "--data-dir", data_dir]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    bodies = {"64x64 PNG": encode(photo(64), "png"), "1024x1024 PNG": encode(photo(), "png")}
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            wait_ready(http)
        png = bodies["64x64 PNG"]

        def hold() -> None:
            with contextlib.suppress(httpx.TransportError):  # the server is killed at the end
                httpx.post(base + "/v1/images/edits", files={"image": ("a.png", png, "image/png")},
                           data={"model": "echo", "prompt": "hold the slot"}, timeout=None)  # fmt: skip

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        os.sched_setaffinity(0, client_cpus)
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(600):  # until the holder runs: then every edit is refused
                if http.get("/readyz").json()["models"]["echo"]["running"] == 1:
                    break
                time.sleep(0.05)
            print(f"server: retouch serve on CPU {server_cpu}, echo engine, workers 1, "
                  f"max_queue 0, the slot held; {args.requests} requests each, one at a time")  # fmt: skip
            for name, body in bodies.items():
                files = {"image": ("a.png", body, "image/png")}
                for _ in range(20):  # warm-up
                    http.post("/v1/images/edits", files=files, data={"model": "echo", "prompt": "x"})
                before, t0 = main_thread_cpu(server.pid), time.perf_counter()
                for _ in range(args.requests):
                    r = http.post("/v1/images/edits", files=files, data={"model": "echo", "prompt": "x"})
                    assert r.status_code == 429, r.text
                after, wall = main_thread_cpu(server.pid), time.perf_counter() - t0
                user, system = ((a - b) * 1000 / args.requests for a, b in zip(after, before, strict=True))
                print(f"429 for a {name} upload ({len(body) / 1e6:.2f} MB): main thread "
                      f"{user + system:.2f} ms CPU (user {user:.2f}, system {system:.2f}); "
                      f"client wall {wall * 1000 / args.requests:.2f} ms")  # fmt: skip
            before = main_thread_cpu(server.pid)
            for _ in range(args.requests):
                http.get("/healthz").raise_for_status()
            after = main_thread_cpu(server.pid)
            user, system = ((a - b) * 1000 / args.requests for a, b in zip(after, before, strict=True))
            print(f"/healthz (keep-alive): main thread {user + system:.2f} ms CPU")
    finally:
        server.kill()  # the held edit would make a graceful stop wait for it
        server.wait(30)


if __name__ == "__main__":
    main()
