"""Engines, sessions and migrations.

* :func:`create_engine` -- an ``AsyncEngine`` for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``. On
  SQLite a connect event turns on WAL, ``busy_timeout``, foreign keys, and makes every transaction ``BEGIN
  IMMEDIATE``: two writers then queue on the busy timeout instead of one failing at once with "database is
  locked" when it upgrades a read transaction to a write (the runner and the SIP adapters append events to the
  same file concurrently).
* :func:`session_factory` -- ``async_sessionmaker`` with ``expire_on_commit=False``.
* :func:`migrate` -- ``alembic upgrade head`` run programmatically on a connection we own (no
  ``alembic.ini``); ``render_as_batch`` on SQLite. On PostgreSQL a transaction-scoped advisory lock makes
  concurrent starts safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from comms.db.inline_sqlite import Checkpointer, InlineConnection, inline_creator
from comms.errors import CommsError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000
_MIGRATE_LOCK_KEY = 0x436F6D6D73  # "Comms": pg_advisory_xact_lock key


class DatabaseError(CommsError):
    """The database could not be opened or migrated."""


def sqlite_url(path: Path) -> str:
    """The URL of the SQLite file at ``path``."""
    return f"sqlite+aiosqlite:///{path}"


def create_engine(url: str, *, inline: bool = False, **kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` for ``url`` (SQLite via aiosqlite or PostgreSQL via asyncpg).

    ``inline``: on a SQLite file, run the statements on the event loop's thread instead of aiosqlite's worker
    (:mod:`comms.db.inline_sqlite`): for the hot path's short statements; ignored on PostgreSQL.
    """
    parsed = make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"database url {parsed!r} has backend {backend!r}: expected sqlite or postgresql")
    if backend == "sqlite" and driver != "aiosqlite":
        raise DatabaseError(f"database url {parsed!r} uses driver {driver!r}: expected aiosqlite")
    if backend == "postgresql" and driver != "asyncpg":
        raise DatabaseError(f"database url {parsed!r} uses driver {driver!r}: expected asyncpg")
    if inline and backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        kwargs.setdefault("async_creator", inline_creator(parsed.database, SQLITE_BUSY_TIMEOUT_MS / 1000))
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def node_engine(url: str) -> tuple[AsyncEngine, Checkpointer | None]:
    """The engine a node (``comms serve``) runs on, and on a SQLite file its WAL checkpointer, started.

    On SQLite: statements on the loop's thread (``inline``), and one pooled connection, so that writers queue in
    asyncio instead of in SQLite's busy handler (which added up to 100 ms steps under load). The caller stops
    the checkpointer after disposing of the engine.
    """
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url), None
    checkpointer = sqlite_checkpointer(url)
    if checkpointer is not None:
        checkpointer.start()
    return create_engine(url, inline=True, pool_size=1, max_overflow=0), checkpointer


def sqlite_checkpointer(url: str) -> Checkpointer | None:
    """A WAL checkpointer thread (not started) for a SQLite file ``url``; None for PostgreSQL or memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Checkpointer(parsed.database)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so that BEGIN is ours (IMMEDIATE, see module doc).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            if not isinstance(getattr(dbapi_connection, "_connection", None), InlineConnection):
                # an inline connection waits for locks itself, yielding the loop (inline_sqlite)
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for ``engine``; objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic ``Config`` without an ini file; ``connection`` is handed to ``env.py``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: sa.Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK_KEY})
    command.upgrade(alembic_config(connection), revision)


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default ``head``) in one transaction."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at (``None`` when never migrated)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
