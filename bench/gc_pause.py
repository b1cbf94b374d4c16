"""What one full pass of Python's garbage collector costs in a process holding what a retouch
front or replica holds, before and after ``gc.freeze()`` (``retouch serve`` freezes once it has
started: ``cli.freeze_collector``; Ray Serve replicas once their engine has loaded:
``deploy.REPLICA_ENV``). A full pass runs on the event loop's thread and stalls every request in
flight. Each set-up runs in a fresh interpreter:

    python bench/gc_pause.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETUPS = {
    "front, built-in engines": ["retouch.cli", "retouch.bootstrap", "retouch.engine.classic"],
    "front on the Ray backend": ["retouch.cli", "retouch.bootstrap", "ray.serve", "retouch.scheduler.ray"],
    "front or replica with diffusers": ["retouch.cli", "retouch.bootstrap", "torch", "diffusers", "transformers"],
}  # fmt: skip

PROBE = """
import gc, importlib, sys, time, warnings
warnings.simplefilter("ignore")
for name in sys.argv[1:]:
    importlib.import_module(name)

def full_pass_ms():
    times = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)

tracked = len(gc.get_objects())
before = full_pass_ms()
gc.freeze()
print(tracked, before, full_pass_ms())
"""


def main() -> None:
    print("| what the process holds | objects tracked | full pass | after gc.freeze() |")
    print("|---|---:|---:|---:|")
    for label, modules in SETUPS.items():
        out = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": str(ROOT / "src")})  # fmt: skip
        tracked, before, after = out.stdout.split()
        print(f"| {label} | {int(tracked):,} | {float(before):.0f} ms | {float(after):.1f} ms |")


if __name__ == "__main__":
    main()
