"""Migrations on real SQLite and PostgreSQL: head matches the models, re-running is a no-op, down and up work."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from comms.db.engine import alembic_config, current_revision, migrate
from comms.db.models import GLOBAL_CHAIN, Base


def _diff(conn: sa.Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_head_schema_matches_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    assert await current_revision(engine) == _head()


async def test_migrate_again_is_a_no_op(db_url: str, engine: AsyncEngine) -> None:
    await migrate(db_url)
    assert await current_revision(engine) == _head()
    async with engine.connect() as conn:
        chains = (await conn.execute(sa.text("SELECT name, next_seq FROM event_chain"))).all()
    assert [tuple(r) for r in chains] == [(GLOBAL_CHAIN, 1)]


async def test_downgrade_to_base_and_up_again(db_url: str, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert tables <= {"alembic_version"}
    await engine.dispose()  # PostgreSQL: the advisory lock and DDL need no idle connection in the way
    await migrate(db_url)
    async with engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        triggers = await conn.execute(
            sa.text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                if conn.dialect.name == "sqlite"
                else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            )
        )
        assert len(triggers.all()) == 2
