"""The inline SQLite driver: same results as aiosqlite, lock waits that yield the loop, a WAL checkpointer."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from comms.db.engine import create_engine, migrate, session_factory, sqlite_checkpointer, sqlite_url
from comms.db.inline_sqlite import InlineConnection, inline_creator
from comms.db.models import Site


async def _migrated(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "comms.db")
    await migrate(url)
    return url


async def test_orm_round_trip_and_constraints_match_aiosqlite(tmp_path: Path) -> None:
    url = await _migrated(tmp_path)
    inline = create_engine(url, inline=True, pool_size=1, max_overflow=0)
    threaded = create_engine(url)
    try:
        async with session_factory(inline)() as s, s.begin():
            s.add(Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL"))
        async with session_factory(threaded)() as s:  # the other driver reads what the inline one wrote
            site = await s.scalar(sa.select(Site).where(Site.code == "north"))
        assert site is not None and site.name == "Northside Imaging" and site.timezone == "America/Chicago"
        async with session_factory(inline)() as s:
            conn = await s.connection()
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, InlineConnection)
            assert (await s.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await s.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
            # the busy timeout is the driver's own (below), never SQLite's blocking one
            assert (await s.execute(sa.text("PRAGMA busy_timeout"))).scalar() == 0
        with pytest.raises(IntegrityError, match="UNIQUE"):  # a constraint error surfaces as SQLAlchemy's
            async with session_factory(inline)() as s, s.begin():
                s.add(Site(code="north", name="Again", timezone="America/Chicago", us_state="IL"))
        async with session_factory(inline)() as s:  # ... and the failed transaction left nothing behind
            assert (await s.execute(sa.select(sa.func.count()).select_from(Site))).scalar() == 1
    finally:
        await inline.dispose()
        await threaded.dispose()


async def test_a_lock_wait_yields_the_loop_and_then_proceeds(tmp_path: Path) -> None:
    """Another connection holds the write lock for 300 ms: the inline writer waits for it without blocking the
    event loop (a 10 ms ticker keeps ticking), then commits."""
    url = await _migrated(tmp_path)
    holder = sqlite3.connect(tmp_path / "comms.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.commit)
    engine = create_engine(url, inline=True)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.get_running_loop().create_task(ticker())
    try:
        release.start()
        started = time.monotonic()
        async with session_factory(engine)() as s, s.begin():
            s.add(Site(code="late", name="Late Site", timezone="America/Chicago", us_state="IL"))
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0, f"waited {waited:.3f} s for a lock held 0.3 s"
        during = [t for t in ticks if started <= t <= started + waited]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert len(during) >= 10 and max(gaps) < 0.1, (
            f"loop blocked: {len(during)} ticks, max gap {max(gaps)}"
        )
        async with session_factory(engine)() as s:
            assert await s.scalar(sa.select(Site.name).where(Site.code == "late")) == "Late Site"
    finally:
        tick_task.cancel()
        release.cancel()
        holder.close()
        await engine.dispose()


async def test_a_lock_held_past_the_busy_timeout_fails_clearly(tmp_path: Path) -> None:
    url = await _migrated(tmp_path)
    holder = sqlite3.connect(tmp_path / "comms.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(url, inline=True, async_creator=inline_creator(str(tmp_path / "comms.db"), 0.2))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            async with session_factory(engine)() as s, s.begin():
                s.add(Site(code="never", name="Never", timezone="America/Chicago", us_state="IL"))
        assert 0.15 <= time.monotonic() - started < 1.5
    finally:
        holder.rollback()
        holder.close()
        await engine.dispose()
    engine = create_engine(url, inline=True)  # once released, the same write goes through
    try:
        async with session_factory(engine)() as s, s.begin():
            s.add(Site(code="never", name="Now", timezone="America/Chicago", us_state="IL"))
    finally:
        await engine.dispose()


async def test_the_checkpointer_copies_the_wal_back(tmp_path: Path) -> None:
    url = await _migrated(tmp_path)
    checkpointer = sqlite_checkpointer(url)
    assert checkpointer is not None
    assert sqlite_checkpointer("postgresql+asyncpg://u@127.0.0.1/db") is None
    engine = create_engine(url, inline=True)
    checkpointer.start()
    try:
        for i in range(50):
            async with session_factory(engine)() as s, s.begin():
                s.add(Site(code=f"s{i}", name=f"Site {i}", timezone="America/Chicago", us_state="IL"))
        for _ in range(50):
            if checkpointer.checkpoints >= 2:
                break
            await asyncio.sleep(0.1)
        assert checkpointer.checkpoints >= 2
        # a fresh reader that ignores the WAL (immutable) sees the rows: they are in the main database file
        plain = sqlite3.connect(f"file:{tmp_path / 'comms.db'}?immutable=1", uri=True)
        try:
            assert plain.execute("SELECT count(*) FROM site").fetchone() == (50,)
        finally:
            plain.close()
    finally:
        checkpointer.stop()
        await engine.dispose()
