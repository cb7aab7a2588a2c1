"""Migrations on real SQLite and PostgreSQL: head matches the models, re-running is a no-op, down and up work,
and 0003 (groups, pager contacts) upgrades a database that has rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from comms.db.engine import alembic_config, create_engine, current_revision, migrate, sqlite_url
from comms.db.models import GLOBAL_CHAIN, Base
from tests.pg import cluster


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


async def _empty_database(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return sqlite_url(tmp_path / "from-0002.db")
    pg = cluster()
    return pg.url(pg.create_database())


_ROWS = (
    "INSERT INTO person (id, username, display_name, roles, active) VALUES ('p1', 'ann', 'Ann', '', TRUE)",
    "INSERT INTO site (id, code, name, timezone, us_state, active) "
    "VALUES ('s1', 'S', 'Site', 'America/Chicago', 'IL', TRUE)",
    "INSERT INTO room (id, site_id, code, name, device_token_hash, active) "
    f"VALUES ('r1', 's1', 'R', 'Room', '{'a' * 64}', TRUE)",
    "INSERT INTO contact_method (id, person_id, kind, address, priority, label, active) "
    "VALUES ('c1', 'p1', 'sip', 'sip:ann@h', 0, '', TRUE)",
    "INSERT INTO incident (id, code, site_id, room_id, severity, state, policy_snapshot, raised_at, next_seq) "
    "VALUES ('i1', 'X1', 's1', 'r1', 'mild', 'raised', '{}', '2026-01-01 00:00:00', 1)",
    "INSERT INTO call_leg (id, incident_id, person_id, contact_method_id, channel, direction, address, "
    "created_at) VALUES ('l1', 'i1', 'p1', 'c1', 'sip', 'outbound', 'sip:ann@h', '2026-01-01 00:00:00')",
)
_PAGER_ROW = (
    "INSERT INTO contact_method (id, person_id, kind, address, priority, label, active) "
    "VALUES ('c2', 'p1', 'pager', 'wctp:5551001', 1, '', TRUE)"
)


async def test_0003_keeps_contacts_that_legs_refer_to_and_admits_pagers(backend: str, tmp_path: Path) -> None:
    """From 0002 with a contact a call leg refers to: 0003 keeps it, admits ``pager``, still refuses others;
    down to 0002 is refused while a pager contact exists, and works once it is gone."""
    url = await _empty_database(backend, tmp_path)
    await migrate(url, "0002")
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for stmt in _ROWS:
                await conn.execute(sa.text(stmt))
        await engine.dispose()
        await migrate(url)
        async with engine.begin() as conn:
            rows = (await conn.execute(sa.text("SELECT id, kind, address FROM contact_method"))).all()
            assert [tuple(r) for r in rows] == [("c1", "sip", "sip:ann@h")]
            leg = await conn.scalar(sa.text("SELECT contact_method_id FROM call_leg WHERE id = 'l1'"))
            assert leg == "c1"
            if backend == "sqlite":
                assert (await conn.execute(sa.text("PRAGMA foreign_key_check"))).all() == []
                tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
                assert "_contact_method_0003" not in tables
            await conn.execute(sa.text(_PAGER_ROW))
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(sa.text(_PAGER_ROW.replace("'c2'", "'c3'").replace("'pager'", "'fax'")))
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        await engine.dispose()

        with pytest.raises(RuntimeError, match=r"1 pager contact method\(s\) exist: expected none"):
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0002"))
        async with engine.begin() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM person_group")) == 0  # still at 0003
            await conn.execute(sa.text("DELETE FROM contact_method WHERE kind = 'pager'"))
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0002"))
        assert await current_revision(engine) == "0002"
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            assert {"person_group", "person_group_member"}.isdisjoint(tables)
            assert await conn.scalar(sa.text("SELECT count(*) FROM call_leg")) == 1
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(sa.text(_PAGER_ROW))
    finally:
        await engine.dispose()
