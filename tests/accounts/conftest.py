"""Accounts fixtures: one database per test, on SQLite and on a real PostgreSQL server.

``database_url`` is parametrised over both backends. PostgreSQL needs
``RETOUCH_TEST_POSTGRES_URL`` (``.ci/run`` starts a server and sets it) pointing at a role that
may create databases: each test gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import psycopg
import pytest
from sqlalchemy import Connection, RowMapping, select
from sqlalchemy.engine import make_url

from retouch.accounting import keys, migrate
from retouch.accounting.database_gate import DatabaseGate
from retouch.accounting.db import Database
from retouch.accounting.tables import usage_records
from retouch.config import ModelSettings, Settings
from tests.conftest import Harness

POSTGRES_URL = os.environ.get("RETOUCH_TEST_POSTGRES_URL")
T0 = 1_800_000_000.0 + 10
"""A fixed test time 10 s into a minute, so rate windows and reset headers are predictable."""


def _admin_conninfo(url: str) -> str:
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'accounts.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("RETOUCH_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    name = f"retouch_t_{uuid.uuid4().hex[:16]}"
    admin = _admin_conninfo(POSTGRES_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Clock:
    """A settable clock for the gate: rate windows, TTLs and ledger times without sleeping."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Accounts:
    """The test's database from the operator's side, and gates bound to it."""

    settings_factory: Callable[..., Settings]
    url: str
    clock: Clock = field(default_factory=Clock)
    gates: list[DatabaseGate] = field(default_factory=list)
    """Every gate ``gate`` made, newest last."""
    _db: Database | None = None

    def settings(self, **overrides: Any) -> Settings:
        overrides.setdefault("database_url", self.url)
        overrides.setdefault("models", [ModelSettings(name="echo", engine="echo")])
        return self.settings_factory(**overrides)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.from_settings(self.settings())
            migrate.upgrade(self._db)
        return self._db

    def create_key(self, name: str = "alice", **limits: Any) -> tuple[keys.KeyInfo, str]:
        if "models" in limits and limits["models"] is not None:
            limits["models"] = frozenset(limits["models"])
        return self.db.write_sync(keys.create_key, name, keys.KeyLimits(**limits))

    def revoke(self, key_id: str) -> None:
        self.db.write_sync(keys.revoke_key, key_id)

    def rows(self, *, fresh: bool = False) -> list[RowMapping]:
        """The ledger, in insertion order; ``fresh`` reads through a newly opened database
        (after a crash, say) instead of the long-lived helper connection."""

        def read(conn: Connection) -> list[RowMapping]:
            stmt = select(usage_records).order_by(usage_records.c.id)
            return list(conn.execute(stmt).mappings().all())

        if not fresh:
            return self.db.read_sync(read)
        db = Database.from_settings(self.settings())
        try:
            return db.read_sync(read)
        finally:
            db.close()

    async def gate(self, settings: Settings) -> DatabaseGate:
        """A ``gate_factory`` for ``build_app``: the database gate on the test clock."""
        gate = await DatabaseGate.start(settings, clock=self.clock)
        self.gates.append(gate)
        return gate

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


@pytest.fixture
def accounts(database_url: str, make_settings: Callable[..., Settings]) -> Iterator[Accounts]:
    acc = Accounts(make_settings, database_url)
    yield acc
    acc.close()


def sdk_for(harness: Harness, secret: str | None, **options: Any) -> openai.AsyncOpenAI:
    """The official SDK on the harness's in-process app, sending ``secret`` as its key."""
    options.setdefault("max_retries", 0)
    return harness.sdk.with_options(api_key=secret or "sk-none", **options)


def counting_sdk(harness: Harness, secret: str, **options: Any) -> tuple[openai.AsyncOpenAI, list[str]]:
    """An SDK whose every HTTP attempt (retries included) is logged in the returned list."""
    sent: list[str] = []

    async def log(request: httpx2.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=harness.app),
        base_url="http://retouch.test",
        event_hooks={"request": [log]},
    )
    client = openai.AsyncOpenAI(
        api_key=secret, base_url="http://retouch.test/v1", http_client=http, **options
    )
    return client, sent
