"""A whole node (``comms.app.CommsApp``: SQLite, our SIP stack, the media gateway, the Twilio channels and the
Twilio dial-in) wired to the fake Twilio, for the dial-in and accept-hook tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from comms.app import CommsApp
from escalation.dialin import DialInSettings
from tests.support import NodeReads, Rad, RoomSpec, prompt_cache, seed_site, started_node
from tests.twilio.conftest import fake_twilio, twilio_settings
from tests.twilio.fake_twilio import FakeTwilio, Phone

__all__ = [
    "DIALIN",
    "DIALIN_NUMBER",
    "ROOM_PHONE",
    "SPOKEN_FALLBACK",
    "AppNode",
    "Rad",
    "app_node",
    "prompt_cache",
]

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


class AppNode(NodeReads):
    def __init__(self, app: CommsApp, fake: FakeTwilio) -> None:
        self.app, self.fake = app, fake

    async def directory(self, tier: Sequence[Rad], *, ring_timeout_s: int = 20) -> None:
        """Site north: room CT2 (its phone is :data:`ROOM_PHONE`) and MR4 (no phone); one tier of ``tier``."""
        await seed_site(
            self.sessions,
            [tier],
            rooms=[RoomSpec("CT2", phone=f"sip:{ROOM_PHONE}@pbx.example.test"), RoomSpec("MR4")],
            ring_timeout_s=ring_timeout_s,
        )


@pytest.fixture
async def app_node(
    tmp_path: Path,
    prompt_cache: Path,
    phones: dict[str, Phone],
) -> AsyncIterator[AppNode]:
    fake = fake_twilio(phones)
    api = await fake.start()
    twilio = twilio_settings(api, ivr_timeout_s=2.0, dialin_number=DIALIN_NUMBER, hold_pause_s=1)
    try:
        async with started_node(
            tmp_path,
            prompt_cache,
            ivr_timeout_s=6.0,
            safety_poll_s=0.2,
            min_ring_s=2.0,
            dialin=DIALIN,
            twilio=twilio,
            twilio_port=0,
        ) as app:
            fake.webhook_base = f"http://127.0.0.1:{app.twilio_port}"
            yield AppNode(app, fake)
    finally:
        await fake.close()
