"""pytest fixtures for the peer harnesses; imported by ``tests/peers/conftest.py`` and ``tests/interop/conftest.py``.

Each factory fixture starts programs on demand and stops every one it started when the test ends.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from comms.clock import SystemClock
from sip.ua import UaConfig, UserAgent

from .baresip import Baresip
from .kamailio import Kamailio
from .sipp import Sipp
from .tlscert import LoopbackCert, make_cert


def require_program(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh --test installs it)")


@pytest.fixture
async def softphone() -> AsyncIterator[Any]:
    """A started pjsua2 softphone (answers at once; change with ``set_behaviour``)."""
    pytest.importorskip("pjsua2", reason="the softphone extra is not installed")
    from sip.softphone import Softphone

    phone = Softphone()
    await phone.start()
    try:
        yield phone
    finally:
        await phone.stop()


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Callable[..., Sipp]]:
    """``sipp("uas_busy.xml", remote=None, **options)`` -> a not yet started :class:`Sipp`."""
    require_program("sipp")
    made: list[Sipp] = []

    def make(scenario: str, **options: Any) -> Sipp:
        instance = Sipp(scenario, tmp_path, **options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        if instance._process is not None and instance._process.returncode is None:
            await instance.stop()


@pytest.fixture
async def baresip(tmp_path: Path) -> AsyncIterator[Callable[..., Baresip]]:
    """``baresip(user="bob", **options)`` -> a not yet started :class:`Baresip`."""
    require_program("baresip")
    made: list[Baresip] = []

    def make(**options: Any) -> Baresip:
        instance = Baresip(tmp_path, **options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.stop()


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[Callable[..., Kamailio]]:
    """``kamailio(target="host:port", users={...})`` -> a not yet started :class:`Kamailio`."""
    require_program("kamailio")
    made: list[Kamailio] = []

    def make(**options: Any) -> Kamailio:
        instance = Kamailio(tmp_path, **options)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> LoopbackCert:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    require_program("openssl")
    return make_cert(tmp_path_factory.mktemp("tls"))


UaFactory = Callable[..., Awaitable[UserAgent]]


@pytest.fixture
async def make_ua() -> AsyncIterator[UaFactory]:
    """``await make_ua(**UaConfig fields)``: a started UserAgent on loopback, closed after the test."""
    started: list[UserAgent] = []

    async def factory(**config: Any) -> UserAgent:
        agent = await UserAgent.start(SystemClock(), UaConfig(**config))
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        await agent.close()
