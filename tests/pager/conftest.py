"""Fixtures of the pager tests: a WCTP gateway on loopback, and databases (the runner tests here that take
``sf`` run on SQLite and on a test-owned PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.db_fixtures import backend, db_url, engine, sessions, sf
from tests.pager.servers import WctpServer

__all__ = ["backend", "db_url", "engine", "sessions", "sf", "wctp"]


@pytest.fixture
async def wctp() -> AsyncIterator[WctpServer]:
    """A WCTP gateway that knows pagers 5551001 and 5551002."""
    server = WctpServer({"5551001", "5551002"})
    await server.start()
    yield server
    await server.close()
