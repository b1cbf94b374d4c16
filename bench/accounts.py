"""Cost of API keys, limits and the ledger per edit: the same edit with and without the
database gate.

Runs the app in-process (ASGI, no sockets) serving the ``echo`` engine, and sends small PNG
edits (so the gate's share is as large as it gets) alternately to an app with ``OpenGate``
(nothing checked, nothing written) and to apps with the ``DatabaseGate`` on SQLite (and on
PostgreSQL with ``--postgres URL``). The key has a requests/min, images/min and token limit, so
every request runs the whole path: key lookup with the rate window (authenticate), the counter
upsert (admit) and the ledger insert + quota update (record). It also times that path alone,
calling the gate directly.

    python bench/accounts.py [--requests 300] [--size 64] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
from asgi_lifespan import LifespanManager
from PIL import Image

from retouch.accounting import keys, migrate
from retouch.accounting.database_gate import DatabaseGate
from retouch.accounting.db import Database
from retouch.accounting.gate import UsageRecord
from retouch.bootstrap import build_app, open_gate
from retouch.config import ModelSettings, Settings, load_settings

LIMITS = keys.KeyLimits(requests_per_minute=10**9, images_per_minute=10**9, token_quota=10**15)


def settings(data_dir: Path, url: str | None) -> Settings:
    return load_settings(
        None, data_dir=data_dir, database_url=url, log_level="warning",
        models=[ModelSettings(name="echo", engine="echo")],
    )  # fmt: skip


def make_key(s: Settings) -> str:
    db = Database.from_settings(s)
    try:
        migrate.upgrade(db)
        _, secret = db.write_sync(keys.create_key, "bench", LIMITS)
    finally:
        db.close()
    return secret


def png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


async def requests_ms(variants: dict[str, tuple[Any, str]], image: bytes, n: int) -> dict[str, list[float]]:
    clients = {
        name: httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bench")
        for name, (app, _) in variants.items()
    }
    files = {"image": ("in.png", image, "image/png")}
    data = {"model": "echo", "prompt": "x"}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(n + 10):
        for name, (_, secret) in variants.items():  # interleaved, so drift hits all alike
            t0 = time.perf_counter()
            r = await clients[name].post(
                "/v1/images/edits", files=files, data=data,
                headers={"Authorization": f"Bearer {secret}"},
            )  # fmt: skip
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 10:
                times[name].append(elapsed * 1000)
    for c in clients.values():
        await c.aclose()
    return times


async def gate_path_us(s: Settings, secret: str, n: int) -> float:
    """authenticate + admit + record, called directly; median microseconds."""
    gate = await DatabaseGate.start(s)
    times = []
    try:
        for i in range(n + 10):
            t0 = time.perf_counter()
            principal = await gate.authenticate(f"Bearer {secret}")
            await gate.admit(principal, model="echo", images=1)
            await gate.record(UsageRecord(
                request_id=f"req_{uuid.uuid4().hex}", key_id=principal.key_id, model="echo",
                status=200, input_images=1, output_images=1, text_tokens=5, image_tokens=65,
                output_tokens=8, latency_ms=3,
            ))  # fmt: skip
            if i >= 10:
                times.append(time.perf_counter() - t0)
    finally:
        await gate.close()
    return statistics.median(times) * 1e6


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="retouch-bench-accounts-"))
    backends: dict[str, str | None] = {"sqlite": None}
    if args.postgres:
        backends["postgres"] = args.postgres
    apps: dict[str, tuple[Any, str]] = {}
    managers = []
    open_settings = settings(root / "open", None)
    app = build_app(open_settings, gate_factory=open_gate)
    managers.append(LifespanManager(app, startup_timeout=60))
    apps["open"] = (await managers[-1].__aenter__()).app, "none"
    gate_settings: dict[str, tuple[Settings, str]] = {}
    for name, url in backends.items():
        s = settings(root / name, url)
        secret = make_key(s)
        gate_settings[name] = (s, secret)
        app = build_app(s, gate_factory=DatabaseGate.start)
        managers.append(LifespanManager(app, startup_timeout=60))
        apps[name] = (await managers[-1].__aenter__()).app, secret
    try:
        times = await requests_ms(apps, png(args.size), args.requests)
    finally:
        for m in reversed(managers):
            await m.__aexit__(None, None, None)
    path_us = {name: await gate_path_us(s, secret, args.requests) for name, (s, secret) in gate_settings.items()}

    base = statistics.median(times["open"])
    print(f"{args.requests} edits per variant, {args.size}x{args.size} PNG in, PNG b64_json out, "
          "echo engine, in-process ASGI (no sockets)")  # fmt: skip
    print(f"open gate (no keys, no ledger): median {base:.2f} ms per edit")
    for name in backends:
        med = statistics.median(times[name])
        print(f"{name} gate: median {med:.2f} ms per edit; +{med - base:.2f} ms; "
              f"ratio {med / base:.3f}; auth+admit+record alone {path_us[name]:.0f} us")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--size", type=int, default=64, help="input image side in pixels")
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL (a scratch database)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
