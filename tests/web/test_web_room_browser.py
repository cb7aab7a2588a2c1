"""The room button in Debian Chromium (Playwright), against a real server on 127.0.0.1 and the real runner.

The runner runs on the system clock with a :class:`HoldChannel` that rings and accepts after 1.5 s, so the page
must show the calling line, then the accept line, from its own 500 ms polling.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from aiohttp import web
from playwright.async_api import async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.models import Incident
from comms.web.app import build_app
from comms.web.context import WebServices
from escalation.runner import EscalationRunner
from tests.web.support import CHEAP_HASHER, TOKENS, Directory, HoldChannel

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def live_server(sf: async_sessionmaker[AsyncSession], directory: Directory) -> AsyncIterator[str]:
    clock = SystemClock()
    runner = EscalationRunner(
        sf, clock, node_id="browser-test", channels={"sip": HoldChannel(clock, accept_after=1.5)}
    )
    await runner.start()
    services = WebServices(
        session_factory=sf,
        clock=clock,
        runner=runner,
        session_secret=secrets.token_bytes(32),
        cookie_secure=False,
        password_hasher=CHEAP_HASHER,
    )
    app_runner = web.AppRunner(build_app(services), access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    host, port = app_runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await app_runner.cleanup()
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
