"""The room button in Debian Chromium (Playwright), against a real server on 127.0.0.1 and the real runner.

The runner runs on the system clock with a :class:`HoldChannel` that rings and accepts after 1.5 s, so the page
must show the calling line, then the accept line, from its own 500 ms polling.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from playwright.async_api import async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.models import Incident
from comms.web.app import build_app
from escalation.runner import EscalationRunner
from tests.web.support import (
    CHROMIUM_ARGS,
    TOKENS,
    Directory,
    HoldChannel,
    make_services,
    served,
)


@pytest.fixture
async def live_server(sf: async_sessionmaker[AsyncSession], directory: Directory) -> AsyncIterator[str]:
    clock = SystemClock()
    runner = EscalationRunner(
        sf, clock, node_id="browser-test", channels={"sip": HoldChannel(clock, accept_after=1.5)}
    )
    await runner.start()
    async with served(build_app(make_services(sf, clock, runner))) as url:
        yield url
    await runner.stop()


async def test_room_page_raises_and_follows_an_incident(
    live_server: str, sf: async_sessionmaker[AsyncSession]
) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{live_server}/rooms/CT-1?token={TOKENS['CT-1']}")
            await expect(page.locator("#room-name")).to_have_text("Scanner CT-1 · Main Hospital")
            assert page.url == f"{live_server}/rooms/CT-1"  # the token left the address bar
            stored = await page.evaluate("localStorage.getItem('comms.roomToken.CT-1')")
            assert stored == TOKENS["CT-1"]

            button = page.get_by_role("button", name="Contrast reaction")
            box = await button.bounding_box()
            assert box is not None
            assert box["height"] >= 200  # a big touch target
            await page.locator("label.sev", has_text="Moderate").click()
            await button.click()

            status = page.locator("#status")
            await expect(status).to_have_text("Calling Dr Ada Diaz… (tier 1)", timeout=10_000)
            await expect(button).to_be_disabled()
            await expect(status).to_have_text(
                re.compile(r"^Accepted by Dr Ada Diaz after \d+\.\d s$"), timeout=10_000
            )
            await expect(status).to_have_attribute("data-tone", "accepted")
            await expect(page.get_by_role("button", name=re.compile("ready for a new alert"))).to_be_visible()

            async with sf() as s:
                incident = (await s.scalars(sa.select(Incident))).one()
            assert incident.severity.value == "moderate"
            assert incident.state.value == "accepted"

            # a reload (no token in the URL) keeps the token and picks the open incident up again
            await page.goto(f"{live_server}/rooms/CT-1")
            await expect(status).to_have_text(re.compile(r"^Accepted by Dr Ada Diaz after"), timeout=10_000)

            # a refused token asks for a new one
            other = await browser.new_page()
            await other.goto(f"{live_server}/rooms/CT-2?token=wrong-token")
            await expect(other.locator("#token-error")).to_contain_text(
                "Token refused: the bearer token matches"
            )
            await expect(other.locator("#token-form")).to_be_visible()
            await expect(other.locator("#panel")).to_be_hidden()
        finally:
            await browser.close()
