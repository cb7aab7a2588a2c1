"""Fixtures for interop tests: our UserAgent (sip/ua.py) on loopback against the real peers of tests/peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from sip.ua import Call, CallEvent, UserAgent
from tests.peers.fixtures import UaFactory, baresip, kamailio, make_ua, sipp, softphone, tls_cert
from tests.sip.conftest import Inbox

__all__ = [
    "Inbox",
    "UaFactory",
    "baresip",
    "event",
    "kamailio",
    "make_ua",
    "sipp",
    "softphone",
    "tls_cert",
    "ua",
    "uri_of",
]

E = TypeVar("E", bound=CallEvent)


@pytest.fixture
async def ua(make_ua: UaFactory) -> UserAgent:
    """Our UA on 127.0.0.1, UDP and TCP on OS ports."""
    return await make_ua()


def uri_of(agent: UserAgent, user: str = "comms", transport: str = "UDP") -> str:
    host, port = agent.address(transport)
    suffix = "" if transport == "UDP" else f";transport={transport.lower()}"
    return f"sip:{user}@{host}:{port}{suffix}"


async def ring_and_answer(call: Call) -> None:
    await call.ring()
    await call.answer()


async def ring_only(call: Call) -> None:
    await call.ring()


async def event(call: Call, kind: type[E], within: float = 5.0) -> E:
    """The first event of ``kind`` in the call's history, waiting up to ``within`` seconds."""

    async def find() -> E:
        async for item in call.events():
            if isinstance(item, kind):
                return item
        raise AssertionError(f"call {call.id} ended without {kind.__name__}: {call.history}")

    return await asyncio.wait_for(find(), within)


@pytest.fixture
async def softphone_config() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await softphone_config(**SoftphoneConfig fields)``: a started softphone (one per test), stopped after."""
    pytest.importorskip("pjsua2", reason="the softphone extra is not installed")
    from sip.softphone import Softphone, SoftphoneConfig

    phones: list[Softphone] = []

    async def start(**config: Any) -> Softphone:
        phone = Softphone()
        phones.append(phone)
        await phone.start(SoftphoneConfig(**config))
        return phone

    yield start
    for phone in phones:
        await phone.stop()
