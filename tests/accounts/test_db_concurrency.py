"""Reads are not queued behind the writer: on SQLite (WAL, a reader pool beside the single
writer thread) and on PostgreSQL (one pool for both)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Connection

from retouch.accounting import keys
from retouch.accounting.db import Database
from tests.accounts.conftest import Accounts

pytestmark = pytest.mark.anyio


async def test_a_read_completes_while_a_write_is_in_progress(accounts: Accounts) -> None:
    accounts.create_key()
    db = Database.from_settings(accounts.settings())
    release = threading.Event()
    writing = threading.Event()

    def slow_write(conn: Connection) -> None:
        keys.any_key(conn)
        writing.set()
        assert release.wait(30), "the test never released the writer"

    try:
        write = asyncio.ensure_future(db.write(slow_write))
        assert await asyncio.to_thread(writing.wait, 30)
        # the writer holds its transaction (and, on SQLite, its only thread) until released;
        # the reads must still be answered now, not after it
        reads = [db.read(keys.any_key) for _ in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*reads), timeout=20) == [True] * 3
        assert not write.done()
        release.set()
        await write
    finally:
        release.set()
        await db.aclose()


async def test_writes_stay_serialised_on_sqlite(accounts: Accounts) -> None:
    accounts.create_key()  # migrates the database
    db = Database.from_settings(accounts.settings())
    if not db.is_sqlite:
        await db.aclose()
        pytest.skip("PostgreSQL takes concurrent writers")
    active = 0
    peak = 0
    lock = threading.Lock()

    def write(conn: Connection) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        keys.any_key(conn)
        with lock:
            active -= 1

    try:
        await asyncio.gather(*(db.write(write) for _ in range(20)))
    finally:
        await db.aclose()
    assert peak == 1
