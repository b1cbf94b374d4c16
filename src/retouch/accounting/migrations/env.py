"""Alembic environment for the accounts database.

``retouch.accounting.migrate.upgrade`` hands in an open connection (inside the transaction
that holds the migration lock) through ``config.attributes["connection"]``; without one (an
operator running ``alembic`` by hand with ``sqlalchemy.url`` set) a connection is made here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from retouch.accounting.tables import metadata

config = context.config


def run() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url or pass a connection"
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
