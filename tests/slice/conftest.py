"""Fixtures for the vertical slice: a whole Contrast Comms node on loopback (SQLite, our SIP stack, real prompts)
and a directory whose radiologists' phones are real peers (SIPp, the pjsua2 softphone)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from comms.app import AppConfig, CommsApp
from comms.clock import SystemClock
from comms.db.engine import sqlite_url
from comms.db.models import (
    CallLeg,
    ContactMethod,
    EscalationPolicy,
    Event,
    Incident,
    Person,
    PolicyTier,
    Room,
    Site,
)
from comms.db.types import ContactKind
from tests.peers.fixtures import sipp, softphone  # noqa: F401  (fixtures)

ROOM_TOKEN = "room-ct2-device-token"


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts")


@dataclass
class Radiologist:
    username: str
    name: str
    uri: str


class Node:
    """A started node plus helpers to fill its directory and read its evidence."""

    def __init__(self, app: CommsApp) -> None:
        self.app = app

    @property
    def sessions(self):  # type: ignore[no-untyped-def]
        assert self.app.sessions is not None
        return self.app.sessions

    async def directory(self, tiers: Sequence[Sequence[Radiologist]], *, ring_timeout_s: int = 10) -> None:
        async with self.sessions() as s, s.begin():
            site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
            s.add(site)
            await s.flush()
            s.add(
                Room(
                    site_id=site.id,
                    code="CT2",
                    name="CT 2",
                    device_token_hash=hashlib.sha256(ROOM_TOKEN.encode()).hexdigest(),
                )
            )
            policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
            s.add(policy)
            await s.flush()
            npi = iter(["1234567893", "1245319599", "1003000126", "1629071301"])
            for position, tier in enumerate(tiers, start=1):
                for rad in tier:
                    person = Person(
                        username=rad.username, display_name=rad.name, roles="radiologist", npi=next(npi)
                    )
                    s.add(person)
                    await s.flush()
                    s.add(ContactMethod(person_id=person.id, kind=ContactKind.SIP, address=rad.uri))
                s.add(
                    PolicyTier(
                        policy_id=policy.id,
                        position=position,
                        ring_timeout_s=ring_timeout_s,
                        targets=[f"person:{r.username}" for r in tier],
                    )
                )

    async def wait_state(self, incident_id: str, states: set[str], timeout: float = 30.0) -> Incident:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            async with self.sessions() as s:
                incident = await s.get(Incident, incident_id)
                assert incident is not None
                if incident.state.value in states:
                    return incident
            if loop.time() > end:
                raise AssertionError(
                    f"incident stayed {incident.state.value}, expected one of {sorted(states)}"
                )
            await asyncio.sleep(0.05)

    async def wait_event(self, incident_id: str, kind: str, timeout: float = 15.0) -> Event:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for ev in await self.events(incident_id):
                if ev.kind == kind:
                    return ev
            if loop.time() > end:
                raise AssertionError(f"no {kind} event within {timeout} s")
            await asyncio.sleep(0.05)

    async def events(self, incident_id: str) -> list[Event]:
        async with self.sessions() as s:
            return list(
                (
                    await s.scalars(
                        sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq)
                    )
                ).all()
            )

    async def legs(self, incident_id: str) -> list[CallLeg]:
        async with self.sessions() as s:
            return list(
                (
                    await s.scalars(
                        sa.select(CallLeg)
                        .where(CallLeg.incident_id == incident_id)
                        .order_by(CallLeg.created_at)
                    )
                ).all()
            )

    async def person_id(self, username: str) -> str:
        async with self.sessions() as s:
            pid = await s.scalar(sa.select(Person.id).where(Person.username == username))
            assert pid is not None
            return pid


@pytest.fixture
async def node(tmp_path: Path, prompt_cache: Path) -> AsyncIterator[Node]:
    config = AppConfig(
        database_url=sqlite_url(tmp_path / "comms.db"),
        data_dir=tmp_path,
        http_port=0,
        sip_udp_port=0,
        sip_tcp_port=None,
        prompt_cache_dir=prompt_cache,
        ivr_timeout_s=4.0,
    )
    app = CommsApp(config, SystemClock())
    await app.start()
    try:
        yield Node(app)
    finally:
        await app.stop()
