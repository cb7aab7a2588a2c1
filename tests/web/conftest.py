"""Web test fixtures: a migrated SQLite file, the real escalation runner, the app behind a TestServer.

pytest-aiohttp is not used: ``aiohttp.test_utils.TestServer``/``TestClient`` are started and closed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.engine import create_engine, migrate, session_factory, sqlite_url
from comms.web.app import build_app
from escalation.runner import EscalationRunner
from tests.web.support import Directory, HoldChannel, make_services, seed

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = sqlite_url(tmp_path / "comms.db")
    await migrate(url)
    eng = create_engine(url)
    yield eng
    await eng.dispose()


@pytest.fixture
def sf(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def directory(sf: async_sessionmaker[AsyncSession]) -> Directory:
    return await seed(sf)


@pytest.fixture
def channel(clock: FakeClock) -> HoldChannel:
    return HoldChannel(clock)


@pytest.fixture
async def runner(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, channel: HoldChannel, directory: Directory
) -> AsyncIterator[EscalationRunner]:
    # Not started: tests tick it by hand under the FakeClock. stop() cancels the legs still held open.
    r = EscalationRunner(sf, clock, node_id="web-test", channels={"sip": channel})
    yield r
    await r.stop()


@pytest.fixture
async def make_client(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, runner: EscalationRunner
) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        app: web.Application | None = None, **overrides: Any
    ) -> TestClient[web.Request, web.Application]:
        if app is None:
            app = build_app(make_services(sf, clock, overrides.pop("runner", runner), **overrides))
        client = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    return await make_client()
