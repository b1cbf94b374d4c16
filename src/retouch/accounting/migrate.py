"""Alembic migrations shipped in the package, run at start-up and by ``retouch db upgrade``.

Several processes may start at once against one PostgreSQL database; the upgrade runs inside
one transaction that first takes a transaction-scoped advisory lock, so the second process
waits and then finds the schema current. PostgreSQL DDL is transactional, so a failed
migration leaves nothing half-done. On SQLite the transaction starts with ``BEGIN IMMEDIATE``,
which serialises processes the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from retouch.accounting.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x7265_746F_7563_68  # "retouch" in ASCII: any fixed bigint shared by all processes


def alembic_config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option(
        "sqlalchemy.url", database.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()


def current_revision(database: Database) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    return database.read_sync(read)


def _locked(database: Database, step: Callable[[Config], None]) -> None:
    config = alembic_config(database)

    def run(conn: Connection) -> None:
        if not database.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        config.attributes["connection"] = conn
        step(config)

    database.write_sync(run)


def _version(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    version = conn.scalar(text("SELECT version_num FROM alembic_version"))
    return None if version is None else str(version)


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision``; a no-op (and silent) when it is there already."""
    head = head_revision(database) if revision == "head" else revision

    def step(config: Config) -> None:
        if _version(config.attributes["connection"]) != head:
            command.upgrade(config, revision)

    _locked(database, step)


def downgrade(database: Database, revision: str) -> None:
    """For tests and operators going back a version (``base`` drops every table)."""
    _locked(database, lambda config: command.downgrade(config, revision))
