"""Gateway test fixtures: aioice offers 127.0.0.1 (it leaves loopback out by default), real peers only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.db.engine import create_engine, migrate, session_factory, sqlite_url
from tests.peers.fixtures import softphone  # noqa: F401 - fixture re-export
from tests.web.support import seed


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only: tests run on loopback without STUN/TURN."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
async def sf(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A migrated SQLite database with the web tests' directory (:func:`tests.web.support.seed`)."""
    url = sqlite_url(tmp_path / "comms.db")
    await migrate(url)
    engine = create_engine(url)
    factory = session_factory(engine)
    await seed(factory)
    yield factory
    await engine.dispose()
