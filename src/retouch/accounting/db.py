"""The accounts database: URL resolution, engine set-up, and running blocking work off the loop.

SQLAlchemy runs synchronously here (no greenlet, no async drivers): every call is a function of
a ``Connection`` run in one transaction on a worker thread. On SQLite all of a process's writes
go through one writer thread, as datasette does, and reads through their own pool of threads
and connections: in WAL mode readers see the last commit without waiting for the writer, so an
authentication read is never queued behind a ledger write. PostgreSQL gets one pool of threads
and connections for both. Write transactions on SQLite start with
``BEGIN IMMEDIATE`` so that two processes (the server and ``retouch keys``) wait for each other
through ``busy_timeout`` instead of failing when a read lock cannot be upgraded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from retouch.config import Settings

T = TypeVar("T")
P = ParamSpec("P")

_WRITE = "retouch_write"


def database_url(settings: Settings) -> URL:
    """The configured URL, with the psycopg 3 driver made explicit; default SQLite in DATA_DIR."""
    if settings.database_url is None:
        path = (settings.data_dir / "accounts.db").resolve()
        return URL.create("sqlite+pysqlite", database=str(path))
    url = make_url(settings.database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+pysqlite")
    if url.drivername not in ("postgresql+psycopg", "sqlite+pysqlite"):
        raise ValueError(
            f"unsupported accounts database {url.drivername!r}: use sqlite:///PATH or "
            "postgresql://USER@HOST/DB"
        )
    return url


def _sqlite_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # Transactions are begun by SQLAlchemy (see _sqlite_begin), not implicitly by sqlite3.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=NORMAL: a committed transaction is in the WAL file before COMMIT
    # returns, so it survives a crash of the process (kill -9); only a power loss can take
    # the last commits. A 10 s busy timeout covers a CLI command writing while the server runs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    def __init__(self, url: URL, *, threads: int = 8) -> None:
        self.url = url
        self.is_sqlite = url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            assert url.database, "SQLite needs a file path"
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            # one connection per reader thread, one for the writer, two spare for CLI-style use
            self.engine: Engine = create_engine(url, pool_size=threads + 1, max_overflow=2)
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="accounts-db-writer")
            self._readers = ThreadPoolExecutor(threads, thread_name_prefix="accounts-db-reader")
        else:
            # pre_ping: a PostgreSQL restart costs one reconnect, not a failed request.
            self.engine = create_engine(
                url, pool_size=threads, max_overflow=0, pool_pre_ping=True
            )
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="accounts-db")
            self._readers = self._executor
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(database_url(settings), threads=settings.accounts.db_threads)

    @property
    def backend(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    # -- blocking API (CLI, start-up, worker threads) -----------------------------------------

    def write_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, ...)`` in one write transaction; an exception rolls it back."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                return fn(conn, *args, **kwargs)

    def read_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if not self.is_sqlite:
            # One statement per read on the request path: autocommit spares PostgreSQL the
            # BEGIN and ROLLBACK round trips around it.
            with self._autocommit.connect() as conn:
                return fn(conn, *args, **kwargs)
        with self.engine.connect() as conn, conn.begin():
            return fn(conn, *args, **kwargs)

    # -- async API (the server) ---------------------------------------------------------------

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.write_sync(fn, *args, **kwargs)
        )

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers, lambda: self.read_sync(fn, *args, **kwargs)
        )

    async def aclose(self) -> None:
        """Let queued work (ledger rows) finish, then close the connections."""
        await asyncio.to_thread(self._shutdown)
        self.engine.dispose()

    def close(self) -> None:
        self._shutdown()
        self.engine.dispose()

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._readers.shutdown(wait=True)
