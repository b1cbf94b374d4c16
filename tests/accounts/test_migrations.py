"""The shipped migrations build exactly the schema in ``tables.py``, and can be re-run."""

from __future__ import annotations

from threading import Thread

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from retouch.accounting import migrate
from retouch.accounting.db import Database
from retouch.accounting.tables import metadata
from tests.accounts.conftest import Accounts


def test_migrations_match_the_tables(accounts: Accounts) -> None:
    db = Database.from_settings(accounts.settings())
    try:
        assert migrate.current_revision(db) is None
        # Two upgrades racing (two servers starting at once) both succeed.
        threads = [Thread(target=migrate.upgrade, args=(db,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert migrate.current_revision(db) == migrate.head_revision(db)
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []

        migrate.downgrade(db, "base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(db)
        assert {"api_keys", "usage_records", "rate_windows", "idempotency_keys"} <= set(
            inspect(db.engine).get_table_names()
        )
    finally:
        db.close()
