"""Two ``retouch serve`` processes sharing one database: one count, one set of keys, and no
committed row lost when both are killed with SIGKILL.

Runs on PostgreSQL (the fleet set-up) and on SQLite (which also serialises writers across
processes, through ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.accounts.conftest import Accounts
from tests.accounts.processes import ServeProcess
from tests.conftest import encode_image, gradient

pytestmark = pytest.mark.live

SRC = encode_image(gradient((32, 32)))


def _edit(server: ServeProcess, secret: str) -> tuple[int, str | None]:
    """(status, x-request-id)."""
    with openai.OpenAI(api_key=secret, base_url=f"{server.url}/v1", max_retries=0) as client:
        try:
            raw = client.images.with_raw_response.edit(
                model="echo", image=("a.png", SRC, "image/png"), prompt="x"
            )
        except openai.APIStatusError as exc:
            return exc.status_code, exc.request_id
    return raw.status_code, raw.headers["x-request-id"]


def test_two_servers_share_counts_keys_and_survive_kill_9(
    accounts: Accounts, tmp_path: Path
) -> None:
    # Both start on an empty database at once: the migration runs once, the other waits.
    servers = [ServeProcess(tmp_path / f"s{i}", accounts.url) for i in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        # Started without keys, so open; a key created now (by this process, as `retouch keys
        # create` would) applies to both from their next request.
        key, secret = accounts.create_key("fleet", requests_per_minute=6)
        assert [_edit(s, "sk-wrong")[0] for s in servers] == [401, 401]

        if time.time() % 60 > 50:  # keep the burst inside one rate window
            time.sleep(60 - time.time() % 60 + 0.2)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _edit(servers[i % 2], secret), range(16)))
        assert sorted(status for status, _ in results) == [200] * 6 + [429] * 10
        served = sorted(rid for status, rid in results if status == 200)

        accounts.revoke(key.id)
        assert [_edit(s, secret)[0] for s in servers] == [401, 401]
        for server in servers:
            server.kill()  # SIGKILL: no shutdown, no flush
    finally:
        for server in servers:
            server.stop()

    # Every response a client received has its row, written before the response went out.
    rows = accounts.rows(fresh=True)
    assert sorted(r["request_id"] for r in rows) == served
    assert {(r["key_id"], r["status"]) for r in rows} == {(key.id, 200)}
