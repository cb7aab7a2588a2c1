"""A room (aiortc peer) and a phone leg (our SIP user agent / the pjsua2 softphone) bridged by the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from comms.clock import SystemClock
from media.gateway import MediaGateway
from sip.ua import Call, CallAnswered, UaConfig, UserAgent
from tests.gateway.support import AiortcRoom
from tests.support import until, write_tone


@pytest.fixture
async def gateway() -> AsyncIterator[MediaGateway]:
    gw = MediaGateway(SystemClock())
    yield gw
    await gw.close()


@pytest.fixture
async def uas() -> AsyncIterator[tuple[UserAgent, UserAgent]]:
    clock = SystemClock()
    ours = await UserAgent.start(clock, UaConfig(tcp_port=None))
    phone = await UserAgent.start(clock, UaConfig(tcp_port=None))
    yield ours, phone
    await ours.close()
    await phone.close()


async def dial_answered(ours: UserAgent, phone: UserAgent) -> tuple[Call, Call]:
    answered: asyncio.Future[Call] = asyncio.get_running_loop().create_future()

    async def on_incoming(call: Call) -> None:
        await call.answer()
        answered.set_result(call)

    phone.on_incoming(on_incoming)
    host, port = phone.address("UDP")
    call = await ours.dial(f"sip:radiologist@{host}:{port}", from_uri="sip:alerts@127.0.0.1")
    async for ev in call.events():
        if isinstance(ev, CallAnswered):
            break
    return call, await asyncio.wait_for(answered, 5)


async def test_room_and_phone_hear_each_other(
    gateway: MediaGateway, uas: tuple[UserAgent, UserAgent], tmp_path: Path
) -> None:
    room = AiortcRoom(freq=440.0)
    await room.answer(await gateway.room_offer("CT-1", await room.offer()))
    await until(lambda: gateway.rooms["CT-1"].session.state == "connected")
    gateway.open_incident("inc-1", "CT-1")

    call, far = await dial_answered(*uas)
    await gateway.join_phone("inc-1", call, leg_id="leg-1")
    assert far.media is not None
    # the phone hears the room's tone through Opus -> 8 kHz G.711
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)
    # the room hears silence from the phone, then the phone's tone
    assert room.listener is not None
    quiet = room.listener.dbfs()
    assert quiet < -60.0
    play = asyncio.get_running_loop().create_task(far.play(write_tone(tmp_path / "tone.wav", seconds=3.0)))
    await until(lambda: room.listener is not None and room.listener.dbfs() > -25.0)
    play.cancel()
    # the supervision record saw two-way audio (no console: audio only)
    await until(
        lambda: any(
            e.kind == "media.supervision" and e.data["level"] == "audio_only" for e in gateway.history
        )
    )
    await call.hangup()
    await room.close()


async def test_room_media_lost_for_5_s_raises_alarm_keeps_call_and_logs_restore(
    gateway: MediaGateway, uas: tuple[UserAgent, UserAgent]
) -> None:
    room = AiortcRoom()
    await room.answer(await gateway.room_offer("CT-1", await room.offer()))
    await until(lambda: gateway.rooms["CT-1"].session.state == "connected")
    gateway.open_incident("inc-2", "CT-1")
    call, far = await dial_answered(*uas)
    await gateway.join_phone("inc-2", call, leg_id="leg-2")
    assert far.media is not None
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)

    room.tone.paused.clear()  # the room's microphone stops sending: no RTP at all
    await asyncio.sleep(5.0)
    lost = [e for e in gateway.history if e.kind == "media.lost"]
    assert [e.data["party"] for e in lost] == ["room"]
    assert lost[0].data["silent_s"] > 3.0
    assert gateway.room_status("CT-1")["alarms"] == ["room"]
    assert any(e.kind == "media.restore_attempt" for e in gateway.history)
    assert call.ended is None and far.ended is None  # the emergency call is not dropped

    room.tone.paused.set()
    await until(lambda: any(e.kind == "media.restored" for e in gateway.history))
    restored = next(e for e in gateway.history if e.kind == "media.restored")
    assert restored.data["party"] == "room" and restored.data["gap_s"] >= 4.0
    assert gateway.room_status("CT-1")["alarms"] == []
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)
    assert call.ended is None
    await call.hangup()
    await room.close()


async def test_room_reconnect_keeps_the_phone_bridged(
    gateway: MediaGateway, uas: tuple[UserAgent, UserAgent]
) -> None:
    first = AiortcRoom(freq=440.0)
    await first.answer(await gateway.room_offer("CT-1", await first.offer()))
    await until(lambda: gateway.rooms["CT-1"].session.state == "connected")
    gateway.open_incident("inc-3", "CT-1")
    call, far = await dial_answered(*uas)
    await gateway.join_phone("inc-3", call)
    assert far.media is not None
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)

    # the tablet reloads: a new connection replaces the old one; the phone hears the room again
    second = AiortcRoom(freq=880.0)
    await second.answer(await gateway.room_offer("CT-1", await second.offer()))
    await first.close()
    await until(lambda: gateway.rooms["CT-1"].session.state == "connected")
    assert gateway.rooms["CT-1"].session.connections == 2
    await asyncio.sleep(0.5)
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)
    assert second.listener is not None
    await until(lambda: second.listener is not None and second.listener.frames > 10)
    assert call.ended is None
    await call.hangup()
    await second.close()


async def test_on_accepted_bridges_only_when_someone_is_there(
    gateway: MediaGateway, uas: tuple[UserAgent, UserAgent]
) -> None:
    order = SimpleNamespace(incident_id="inc-4", room_code="CT-9", leg_id="leg-4")
    call, far = await dial_answered(*uas)
    assert await gateway.on_accepted(order, call) is False  # no room session: the channel says so, hangs up
    room = AiortcRoom()
    await room.answer(await gateway.room_offer("CT-9", await room.offer()))
    await until(lambda: gateway.rooms["CT-9"].session.state == "connected")
    assert await gateway.on_accepted(order, call) is True
    assert far.media is not None
    await until(lambda: far.media is not None and far.media.energy_dbfs(0.3) > -20.0)
    joined = [e for e in gateway.history if e.kind == "media.phone_joined"]
    assert joined and joined[0].leg_id == "leg-4" and joined[0].incident_id == "inc-4"
    await call.hangup()
    await until(lambda: any(e.kind == "media.phone_left" for e in gateway.history))
    await room.close()
