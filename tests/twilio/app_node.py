"""A whole node (``comms.app.CommsApp``: SQLite, our SIP stack, the media gateway, the Twilio channels and the
Twilio dial-in) wired to the fake Twilio, for the dial-in and accept-hook tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from comms.db.types import ContactKind, Direction
from escalation.dialin import DialInSettings
from escalation.twilio_channel import TwilioSettings
from tests.twilio.conftest import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, PUBLIC_BASE
from tests.twilio.fake_twilio import FakeTwilio, Phone

DIALIN_NUMBER = "+13125550199"
ROOM_PHONE = "+13125550150"
"""Room CT2's phone (its ``sip_phone_uri`` is ``sip:+13125550150@pbx.example.test``); MR4 has none (code 674)."""
FALLBACK = "555 0100"
SPOKEN_FALLBACK = "5 5 5 0 1 0 0"
DIALIN = DialInSettings(
    fallback_number=FALLBACK,
    status_interval_s=2.0,
    ivr_timeout_s=2.0,
    inter_digit_timeout_s=1.5,
    retries=1,
    poll_s=0.1,
    accept_wait_s=10.0,
)


@dataclass
class Rad:
    username: str
    name: str
    voice: str | None = None
    sip: str | None = None


class AppNode:
    def __init__(self, app: CommsApp, fake: FakeTwilio) -> None:
        self.app, self.fake = app, fake

    @property
    def sessions(self) -> Any:
        assert self.app.sessions is not None
        return self.app.sessions

    async def directory(self, tier: Sequence[Rad], *, ring_timeout_s: int = 20) -> None:
        async with self.sessions() as s, s.begin():
            site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
            s.add(site)
            await s.flush()
            for code, phone in (("CT2", f"sip:{ROOM_PHONE}@pbx.example.test"), ("MR4", None)):
                s.add(
                    Room(
                        site_id=site.id,
                        code=code,
                        name=code,
                        device_token_hash=hashlib.sha256(code.encode()).hexdigest(),
                        sip_phone_uri=phone,
                    )
                )
            policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
            s.add(policy)
            await s.flush()
            npi = iter(["1234567893", "1245319599"])
            for rad in tier:
                person = Person(
                    username=rad.username, display_name=rad.name, roles="radiologist", npi=next(npi)
                )
                s.add(person)
                await s.flush()
                if rad.voice:
                    s.add(ContactMethod(person_id=person.id, kind=ContactKind.PSTN_VOICE, address=rad.voice))
                if rad.sip:
                    s.add(ContactMethod(person_id=person.id, kind=ContactKind.SIP, address=rad.sip))
            s.add(
                PolicyTier(
                    policy_id=policy.id,
                    position=1,
                    ring_timeout_s=ring_timeout_s,
                    targets=[f"person:{r.username}" for r in tier],
                )
            )

    async def events(self, incident_id: str | None) -> list[Event]:
        where = Event.incident_id.is_(None) if incident_id is None else Event.incident_id == incident_id
        async with self.sessions() as s:
            return list((await s.scalars(sa.select(Event).where(where).order_by(Event.seq))).all())

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

    async def incident(self, incident_id: str) -> Incident:
        async with self.sessions() as s:
            incident = await s.get(Incident, incident_id)
            assert incident is not None
            return incident

    async def dialin_incident(self) -> str:
        async with self.sessions() as s:
            ids = (
                await s.scalars(sa.select(CallLeg.incident_id).where(CallLeg.direction == Direction.INBOUND))
            ).all()
        return ids[0] if ids else ""

    async def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = await predicate()
            if value:
                return value
            if loop.time() > end:
                raise AssertionError(f"{what} not reached within {timeout} s")
            await asyncio.sleep(0.05)

    async def wait_event(
        self, incident_id: str, kind: str, count: int = 1, timeout: float = 20.0
    ) -> list[Event]:
        async def check() -> list[Event] | None:
            found = [e for e in await self.events(incident_id) if e.kind == kind]
            return found if len(found) >= count else None

        result: list[Event] = await self.wait_for(check, timeout, f"{count} x {kind}")
        return result


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts")


@pytest.fixture
async def app_node(tmp_path: Path, prompt_cache: Path, phones: dict[str, Phone]) -> AsyncIterator[AppNode]:
    fake = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_base=PUBLIC_BASE)
    fake.phones = phones
    api = await fake.start()
    twilio = TwilioSettings(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=OUR_NUMBER,
        public_base_url=PUBLIC_BASE,
        api_base_url=api,
        ivr_timeout_s=2.0,
        status_hold_s=1.0,
        dialin_number=DIALIN_NUMBER,
        hold_pause_s=1,
    )
    config = AppConfig(
        database_url=sqlite_url(tmp_path / "comms.db"),
        data_dir=tmp_path,
        http_port=0,
        sip_udp_port=0,
        sip_tcp_port=None,
        prompt_cache_dir=prompt_cache,
        ivr_timeout_s=6.0,
        safety_poll_s=0.2,
        min_ring_s=2.0,
        dialin=DIALIN,
        twilio=twilio,
        twilio_port=0,
    )
    app = CommsApp(config, SystemClock())
    await app.start()
    fake.webhook_base = f"http://127.0.0.1:{app.twilio_port}"
    try:
        yield AppNode(app, fake)
    finally:
        await fake.close()
        await app.stop()
