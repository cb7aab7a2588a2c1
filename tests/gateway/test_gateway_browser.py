"""End to end in Debian Chromium (Playwright, fake camera and microphone): the room page publishes to the gateway;
the technologist presses the button; the real escalation runner calls the on-call radiologist on the pjsua2
softphone, she presses 1 and her call is handed to the gateway; she hears the room and is heard in the room; a
second page, the radiologist console, shows the room's video advancing and plays the room's audio; the room's
microphone goes silent for 5 s: alarm on the room page, call kept, restore logged; evidence in the hash chain.
"""

from __future__ import annotations

import asyncio
import re
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from playwright.async_api import Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.events import chain_events, verify_chain
from comms.db.models import ContactMethod, Event, Person
from comms.web.app import build_app
from comms.web.media_routes import db_evidence_sink, install
from escalation.runner import EscalationRunner
from escalation.sip_channel import SipChannel
from ivr.prompts import PromptRenderer
from media import audio
from media.gateway import MediaGateway
from media.webrtc import PassThroughVideoTrack
from sip.ua import UaConfig, UserAgent
from tests.support import until, write_tone
from tests.web.support import CHROMIUM_ARGS, PASSWORD, TOKENS, make_services, served

CHROMIUM_MEDIA_ARGS = [
    *CHROMIUM_ARGS,
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]


@dataclass
class Server:
    url: str
    gateway: MediaGateway
    runner: EscalationRunner


@pytest.fixture
async def server(
    sf: async_sessionmaker[AsyncSession], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """The web app + the media gateway + the real escalation runner with the SIP alert channel: the winner's
    call is handed to ``MediaGateway.on_accepted`` (the wiring the composition root uses)."""
    clock = SystemClock()
    ua = await UserAgent.start(clock, UaConfig(tcp_port=None))
    gateway = MediaGateway(clock, evidence=db_evidence_sink(sf, clock))
    prompts = PromptRenderer(tmp_path_factory.mktemp("prompts"))
    channel = SipChannel(
        ua,
        prompts,
        clock,
        from_uri="sip:alerts@127.0.0.1",
        ivr_timeout_s=5.0,
        on_accepted=gateway.on_accepted,
    )
    runner = EscalationRunner(sf, clock, node_id="gw-test", channels={"sip": channel})
    await runner.start()
    app = build_app(make_services(sf, clock, runner))
    install(app, gateway)
    async with served(app) as url:
        yield Server(url, gateway, runner)
        await gateway.close()
    await runner.stop()
    await ua.close()


async def energy(page: Page, selector: str) -> float:
    return float(await page.locator(selector).get_attribute("data-audio-energy") or 0.0)


async def test_room_page_softphone_and_console(
    server: Server,
    softphone: Any,
    tmp_path: Path,
    sf: async_sessionmaker[AsyncSession],
) -> None:
    from sip.softphone import Behaviour, IncomingCall, RecordingClosed

    url, gateway = server.url, server.gateway
    # Dr Ada Diaz (tier 1) is on call on the softphone: she answers, presses 1, plays a tone, records what she hears
    async with sf() as db, db.begin():
        ada = (await db.scalars(sa.select(Person).where(Person.username == "ada"))).one()
        contact = (await db.scalars(sa.select(ContactMethod).where(ContactMethod.person_id == ada.id))).one()
        contact.address = softphone.uri()
    softphone.set_behaviour(
        Behaviour(
            answer_after=0.3,
            press="1",
            press_after=1.0,
            play=write_tone(tmp_path / "tone.wav", seconds=30.0, freq=700.0),
            record_dir=tmp_path,
        )
    )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_MEDIA_ARGS)
        try:
            room_ctx = await browser.new_context()
            room = await room_ctx.new_page()
            await room.goto(f"{url}/rooms/CT-1?token={TOKENS['CT-1']}")
            await expect(room.locator("#media-health")).to_have_attribute(
                "data-state", "connected", timeout=15_000
            )

            # nobody talks to the room yet: its received audio energy stays flat
            e0 = await energy(room, "#media-health")
            await asyncio.sleep(1.5)
            baseline = await energy(room, "#media-health") - e0

            # the technologist presses the button; the radiologist accepts on her SIP phone and is bridged
            await room.get_by_role("button", name="Contrast reaction").click()
            incoming = await softphone.wait_for(IncomingCall, timeout=15)
            await until(lambda: any(e.kind == "media.phone_joined" for e in gateway.history), within=30)
            incident_id = next(e for e in gateway.history if e.kind == "media.phone_joined").incident_id
            await expect(room.locator("#status")).to_have_text(re.compile("^Accepted by"), timeout=10_000)
            e1 = await energy(room, "#media-health")
            await asyncio.sleep(2.0)
            with_tone = await energy(room, "#media-health") - e1
            assert with_tone > 20 * max(baseline, 1e-4), (baseline, with_tone)

            # the radiologist console: room video advancing, room audio playing
            console_ctx = await browser.new_context()
            resp = await console_ctx.request.post(
                f"{url}/login", data={"username": "ada", "password": PASSWORD}
            )
            assert resp.ok, await resp.text()
            console = await console_ctx.new_page()
            await console.goto(f"{url}/rooms/CT-1/console")
            health = console.locator("#console-health")
            await expect(console.locator("#console-state")).to_have_attribute(
                "data-state", "connected", timeout=15_000
            )

            async def decoded() -> int:
                return int(await health.get_attribute("data-frames-decoded") or 0)

            await until_async(lambda: decoded(), lambda v: v > 10)
            # the room camera's VP8 frames were forwarded as they came, not decoded and re-encoded per console
            consoles = list(gateway.rooms["CT-1"].consoles.values())
            assert isinstance(consoles[0].video_out, PassThroughVideoTrack)
            assert consoles[0].video_out.frames_sent > 10
            first = await decoded()
            await asyncio.sleep(1.0)
            assert await decoded() > first + 5  # advancing
            assert int(await health.get_attribute("data-frames-shown") or 0) > 0  # requestVideoFrameCallback
            a0 = float(await health.get_attribute("data-audio-energy") or 0)
            await asyncio.sleep(1.5)
            assert (
                float(await health.get_attribute("data-audio-energy") or 0) > a0
            )  # room + phone audio plays

            # the console's (fake) camera is shown in the room
            await until_async(
                lambda: room.locator("#media-health").get_attribute("data-remote-frames"),
                lambda v: int(v or 0) > 5,
            )

            # the supervision record reached two-way audio and video
            await until(
                lambda: any(
                    e.kind == "media.supervision" and e.data["level"] == "audio_video"
                    for e in gateway.history
                ),
                within=10,
            )

            # the room's microphone goes silent for 5 s (its RTP stops): alarm on the room page, call kept up
            await room.evaluate(
                """() => {
                  const s = window.roomMedia.connection().getSenders().find((x) => x.track && x.track.kind === "audio");
                  window.savedTrack = s.track;
                  return s.replaceTrack(null);
                }"""
            )
            alarm = room.locator("#media-alarm")
            await expect(alarm).to_be_visible(timeout=10_000)
            await expect(alarm).to_have_attribute("data-alarm", "room")
            await asyncio.sleep(1.0)
            assert not any(e.kind == "media.phone_left" for e in gateway.history)  # call kept up
            await room.evaluate(
                """() => window.roomMedia.connection().getSenders()
                      .find((x) => x.track === null || x.track.kind === "audio")
                      .replaceTrack(window.savedTrack)"""
            )
            await expect(alarm).to_be_hidden(timeout=10_000)
            restored = [e for e in gateway.history if e.kind == "media.restored"]
            assert restored and restored[0].data["party"] == "room" and restored[0].data["gap_s"] >= 4.0

            # the phone heard the room (Chromium's fake microphone beeps)
            await softphone.hangup(incoming.call)
            closed = await softphone.wait_for(RecordingClosed, timeout=10)
            heard = await read_wav(closed.path)
            levels = [audio.energy_dbfs(heard[i : i + 160]) for i in range(0, heard.size - 160, 160)]
            assert max(levels) > -40.0, max(levels)

            # the evidence reached the incident's hash-chained log
            await until_async(
                lambda: kinds(sf, incident_id),
                lambda k: (
                    {
                        "media.established",
                        "media.video_joined",
                        "media.supervision",
                        "media.phone_joined",
                        "media.lost",
                        "media.restored",
                        "media.quality",
                        "leg.handed_over",
                    }
                    <= k
                ),
            )
            async with sf() as db:
                assert verify_chain(await chain_events(db, incident_id)) == []  # the hash chain holds
        finally:
            await browser.close()


async def read_wav(path: Path) -> np.ndarray:
    # the softphone finishes the WAV header when pjmedia destroys the recorder, just after the event
    for _ in range(40):
        try:
            with wave.open(str(path)) as w:
                return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        except (wave.Error, EOFError):
            await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never became a WAV file")


async def kinds(sf: async_sessionmaker[AsyncSession], incident_id: str) -> set[str]:
    async with sf() as db:
        rows = await db.scalars(sa.select(Event.kind).where(Event.incident_id == incident_id))
        return set(rows)


async def until_async(get, ok, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await get()
        if ok(value):
            return
        if loop.time() > deadline:
            raise AssertionError(f"value {value!r} not accepted within {within} s")
        await asyncio.sleep(0.1)
