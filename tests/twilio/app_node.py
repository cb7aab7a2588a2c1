"""A whole node (``comms.app.CommsApp``: SQLite, our SIP stack, the media gateway, the Twilio channels and the
Twilio dial-in) wired to the fake Twilio, for the dial-in and accept-hook tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from comms.app import CommsApp
from escalation.dialin import DialInSettings
from escalation.twilio_channel import TwilioSettings
from tests.dialin.support import EvidenceReads, Rad, add_dialin_site, started_node
from tests.slice.conftest import prompt_cache  # noqa: F401  (fixture)
from tests.twilio.conftest import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, PUBLIC_BASE
from tests.twilio.fake_twilio import FakeTwilio, Phone

__all__ = ["DIALIN", "DIALIN_NUMBER", "ROOM_PHONE", "SPOKEN_FALLBACK", "AppNode", "Rad", "app_node"]

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


class AppNode(EvidenceReads):
    def __init__(self, app: CommsApp, fake: FakeTwilio) -> None:
        self.app, self.fake = app, fake

    @property
    def sessions(self) -> Any:
        assert self.app.sessions is not None
        return self.app.sessions

    @property
    def extension(self) -> str:
        """``host:port`` of the node's SIP UDP listener (the SIP dial-in answers ``sip:reaction@`` there)."""
        assert self.app.ua is not None
        host, port = self.app.ua.address("UDP")
        return f"{host}:{port}"

    async def directory(self, tier: Sequence[Rad], *, ring_timeout_s: int = 20) -> None:
        await add_dialin_site(
            self.sessions,
            tier,
            room_phones={"CT2": f"sip:{ROOM_PHONE}@pbx.example.test", "MR4": None},
            ring_timeout_s=ring_timeout_s,
        )


@pytest.fixture
async def app_node(
    tmp_path: Path,
    prompt_cache: Path,  # noqa: F811
    phones: dict[str, Phone],
) -> AsyncIterator[AppNode]:
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
