"""A node with the Twilio channels: real SQLite (migrated), a real EscalationRunner, the webhook app on
127.0.0.1:0 and the fake Twilio (the real ``twilio`` library talks to it through ``LocalApiHttpClient``)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.engine import create_engine, migrate, session_factory, sqlite_url
from comms.db.models import (
    ContactMethod,
    EscalationPolicy,
    Incident,
    Person,
    PolicyTier,
    Room,
    Site,
)
from comms.db.types import ContactKind
from comms.twilio_web import build_twilio_app
from escalation.runner import EscalationRunner, hash_pin
from escalation.twilio_channel import (
    TwilioSettings,
    TwilioSmsChannel,
    TwilioVoiceChannel,
    close_twilio_client,
    twilio_client,
)
from tests.dialin.support import EvidenceReads, Rad
from tests.twilio.fake_twilio import FakeTwilio, Phone

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "f" * 32
OUR_NUMBER = "+13125550100"
PUBLIC_BASE = "https://comms.example.test"


class TwilioNode(EvidenceReads):
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        runner: EscalationRunner,
        fake: FakeTwilio,
        voice: TwilioVoiceChannel,
        sms: TwilioSmsChannel,
        webhook_base: str,
    ) -> None:
        self.engine, self.sessions, self.runner, self.fake = engine, sessions, runner, fake
        self.voice, self.sms, self.webhook_base = voice, sms, webhook_base

    async def directory(self, tiers: Sequence[Sequence[Rad]], *, ring_timeout_s: int = 30) -> None:
        async with self.sessions() as s, s.begin():
            site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
            s.add(site)
            await s.flush()
            s.add(
                Room(
                    site_id=site.id,
                    code="CT2",
                    name="CT 2",
                    device_token_hash=hashlib.sha256(b"room-ct2").hexdigest(),
                )
            )
            policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
            s.add(policy)
            await s.flush()
            npi = iter(["1234567893", "1245319599", "1003000126", "1629071301"])
            for position, tier in enumerate(tiers, start=1):
                for rad in tier:
                    person = Person(
                        username=rad.username,
                        display_name=rad.name,
                        roles="radiologist",
                        npi=next(npi),
                        pin_hash=hash_pin(rad.pin) if rad.pin else None,
                    )
                    s.add(person)
                    await s.flush()
                    if rad.voice:
                        s.add(
                            ContactMethod(person_id=person.id, kind=ContactKind.PSTN_VOICE, address=rad.voice)
                        )
                    if rad.sms:
                        s.add(
                            ContactMethod(
                                person_id=person.id, kind=ContactKind.SMS, address=rad.sms, priority=1
                            )
                        )
                s.add(
                    PolicyTier(
                        policy_id=policy.id,
                        position=position,
                        ring_timeout_s=ring_timeout_s,
                        targets=[f"person:{r.username}" for r in tier],
                    )
                )

    async def wait_state(self, incident_id: str, states: set[str], timeout: float = 20.0) -> Incident:
        async def check() -> Incident | None:
            incident = await self.incident(incident_id)
            return incident if incident.state.value in states else None

        result: Incident = await self.wait_for(check, timeout, f"incident state in {sorted(states)}")
        return result

    async def wait_calls_done(self, timeout: float = 20.0) -> None:
        async def check() -> bool:
            return all(c.done.is_set() for c in self.fake.calls.values()) and not self.voice.live_legs()

        await self.wait_for(check, timeout, "all calls over")


@pytest.fixture
def phones() -> dict[str, Phone]:
    return {}


@pytest.fixture
def burst() -> bool:
    """Deliver status callbacks at the end of each call, shuffled and twice each (False: at once, in order)."""
    return True


@pytest.fixture
async def twilio_node(tmp_path: Path, phones: dict[str, Phone], burst: bool) -> AsyncIterator[TwilioNode]:
    url = sqlite_url(tmp_path / "comms.db")
    await migrate(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    clock = SystemClock()
    fake = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_base=PUBLIC_BASE, burst=burst)
    fake.phones = phones
    api = await fake.start()
    settings = TwilioSettings(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=OUR_NUMBER,
        public_base_url=PUBLIC_BASE,
        api_base_url=api,
        ivr_timeout_s=1.0,
        status_hold_s=1.0,
    )
    client = twilio_client(settings)
    voice = TwilioVoiceChannel(client, settings, clock, sessions)
    sms = TwilioSmsChannel(client, settings, clock, sessions)
    runner = EscalationRunner(
        sessions, clock, node_id="node-t", channels={voice.kind: voice, sms.kind: sms}, safety_poll_s=0.2
    )
    sms.attach(runner)
    app = build_twilio_app(settings, sessions=sessions, clock=clock, node_id="node-t", voice=voice, sms=sms)
    web_runner = web.AppRunner(app, access_log=None)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    webhook_base = f"http://127.0.0.1:{web_runner.addresses[0][1]}"
    fake.webhook_base = webhook_base
    await runner.start()
    node = TwilioNode(engine, sessions, runner, fake, voice, sms, webhook_base)
    try:
        yield node
    finally:
        await runner.stop()
        await fake.close()
        await web_runner.cleanup()
        await close_twilio_client(client)
        await engine.dispose()


# the whole-node fixtures of the dial-in tests (after the constants above: app_node imports them)
from tests.peers.fixtures import softphone  # noqa: E402, F401
from tests.twilio.app_node import app_node, prompt_cache  # noqa: E402, F401
