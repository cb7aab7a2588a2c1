"""Database fixtures shared by tests/db, tests/directory and the runner tests (tests/engine, tests/escalation,
tests/pager): each runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.engine import create_engine, session_factory
from tests.pg import migrated_database


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> str:
    return await migrated_database(backend, tmp_path)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sf(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """``sessions`` under the name the runner tests give it."""
    return sessions
