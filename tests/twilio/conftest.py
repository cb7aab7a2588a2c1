"""A node with the Twilio channels: real SQLite (migrated), a real EscalationRunner, the webhook app on
127.0.0.1:0 and the fake Twilio (the real ``twilio`` library talks to it through ``LocalApiHttpClient``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.engine import create_engine, migrate, session_factory, sqlite_url
from comms.twilio_web import build_twilio_app
from escalation.runner import EscalationRunner
from escalation.twilio_channel import (
    TwilioSettings,
    TwilioSmsChannel,
    TwilioVoiceChannel,
    close_twilio_client,
    twilio_client,
)
from tests.support import EvidenceReads, Rad, RoomSpec, seed_site
from tests.twilio.fake_twilio import FakeTwilio, Phone

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "f" * 32
OUR_NUMBER = "+13125550100"
PUBLIC_BASE = "https://comms.example.test"


def fake_twilio(phones: dict[str, Phone], cls: type[FakeTwilio] = FakeTwilio, **options: Any) -> FakeTwilio:
    """A fake Twilio (not started) for our account, answering calls to ``phones``."""
    fake = cls(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, public_base=PUBLIC_BASE, **options)
    fake.phones = phones
    return fake


def twilio_settings(api_base_url: str, *, ivr_timeout_s: float, **options: Any) -> TwilioSettings:
    """Our account's Twilio settings against the fake Twilio at ``api_base_url``; ``options`` add fields."""
    return TwilioSettings(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_number=OUR_NUMBER,
        public_base_url=PUBLIC_BASE,
        api_base_url=api_base_url,
        ivr_timeout_s=ivr_timeout_s,
        status_hold_s=1.0,
        **options,
    )


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
        client: Any,
        settings: TwilioSettings,
    ) -> None:
        self.engine, self.sessions, self.runner, self.fake = engine, sessions, runner, fake
        self.voice, self.sms, self.webhook_base = voice, sms, webhook_base
        self.client, self.settings = client, settings
        """The node's twilio client and settings (another node's channels can share them)."""

    async def directory(self, tiers: Sequence[Sequence[Rad]], *, ring_timeout_s: int = 30) -> None:
        """Room CT2; tier *i* calls ``tiers[i]`` on their Twilio numbers and texts their SMS numbers."""
        await seed_site(
            self.sessions, tiers, rooms=[RoomSpec("CT2", "CT 2", "room-ct2")], ring_timeout_s=ring_timeout_s
        )

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
    fake = fake_twilio(phones, burst=burst)
    api = await fake.start()
    settings = twilio_settings(api, ivr_timeout_s=1.0)
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
    node = TwilioNode(engine, sessions, runner, fake, voice, sms, webhook_base, client, settings)
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
